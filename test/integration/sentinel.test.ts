// BullMQ through Redis Sentinel: a master, a replica and one sentinel on loopback.
// The runner finds the master through the sentinel, and after the master is killed
// and the sentinel promotes the replica, workers and producers carry on there.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRedis, type RedisInstance } from '../../src/dev/devstack.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let master: RedisInstance;
let replica: RedisInstance;
let sentinel: ChildProcess;
let sentinelPort: number;

async function role(port: number): Promise<string> {
  const c = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return String(((await c.call('ROLE')) as unknown[])[0]);
  } catch {
    return 'down';
  } finally {
    c.disconnect();
  }
}

beforeAll(async () => {
  h = await createHarness('sentinel');
  master = await startRedis({ dir: path.join(h.dir, 'master') });
  replica = await startRedis({ dir: path.join(h.dir, 'replica') });
  const r = new Redis(replica.url);
  await r.call('REPLICAOF', '127.0.0.1', String(master.port));
  r.disconnect();
  sentinelPort = await freePort();
  const conf = path.join(h.dir, 'sentinel.conf');
  fs.writeFileSync(
    conf,
    `${[
      `port ${sentinelPort}`,
      'bind 127.0.0.1',
      `dir ${h.dir}`,
      `sentinel monitor pgmaint 127.0.0.1 ${master.port} 1`,
      'sentinel down-after-milliseconds pgmaint 1000',
      'sentinel failover-timeout pgmaint 5000',
    ].join('\n')}\n`,
  );
  sentinel = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  await waitUntil(
    async () => (await role(replica.port)) === 'slave' && (await role(sentinelPort)) === 'sentinel',
    20_000,
    'replica and sentinel',
  );
  h.configFile({
    redis: { sentinels: [{ host: '127.0.0.1', port: sentinelPort }], sentinelName: 'pgmaint' },
    worker: { stalledIntervalMs: 1000, lockDurationMs: 2000 },
  });
});
afterAll(async () => {
  await h.close();
  sentinel?.kill('SIGTERM');
  await Promise.all([master?.stop(), replica?.stop()]);
});

describe('Redis through Sentinel', () => {
  let rt: Runtime;
  it('runs jobs on the master the sentinel names', async () => {
    rt = h.runtime({ schedules: [] });
    await rt.history.migrate();
    startWorkers(rt, ['noop']);
    const { job } = await rt.queues.enqueue('noop', {});
    expect((await waitForFinished(rt.queues.get('noop'), job.id!)).state).toBe('completed');
    const direct = new Redis(master.url);
    expect(await direct.exists(`{t-${h.id}}:noop:${job.id}`)).toBe(1);
    direct.disconnect();
  });

  it('carries on on the promoted replica after the master dies', async () => {
    master.process.kill('SIGKILL');
    // 60 s: a sentinel starved of CPU for 2 s (a loaded CI machine) enters TILT and acts only 30 s later.
    await waitUntil(async () => (await role(replica.port)) === 'master', 60_000, 'the sentinel to promote the replica');
    const { job } = await waitUntil(
      () => rt.queues.enqueue('noop', { sleepMs: 10 }).catch(() => undefined),
      30_000,
      'the producer to reach the new master',
    );
    expect((await waitForFinished(rt.queues.get('noop'), job.id!, 60_000)).state).toBe('completed');
    const promoted = new Redis(replica.url);
    expect(await promoted.exists(`{t-${h.id}}:noop:${job.id}`)).toBe(1);
    promoted.disconnect();
  });
});
