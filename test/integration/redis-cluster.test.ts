// BullMQ on a real Redis Cluster of three masters on loopback. The hash-tagged prefix
// puts every key of a queue in one slot; the API enqueues, workers run jobs, schedulers
// sync, and the watchdog repairs a lost run, all through the cluster client.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRedis, type RedisInstance } from '../../src/dev/devstack.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { startServer } from '../../src/http/server.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
const nodes: RedisInstance[] = [];
let rt: Runtime;
let api: string;

/** A port whose cluster bus port (port + 10000) is a valid port too. */
async function clusterPort(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port < 55_000) return port;
  }
}

beforeAll(async () => {
  h = await createHarness('cluster');
  for (const i of [0, 1, 2]) {
    const dir = path.join(h.dir, `node${i}`);
    nodes.push(
      await startRedis({
        dir,
        port: await clusterPort(),
        extraArgs: ['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, 'nodes.conf')],
      }),
    );
  }
  execFileSync('redis-cli', [
    '--cluster',
    'create',
    ...nodes.map((n) => `127.0.0.1:${n.port}`),
    '--cluster-replicas',
    '0',
    '--cluster-yes',
  ]);
  await waitUntil(
    async () =>
      nodes.every((n) =>
        execFileSync('redis-cli', ['-p', String(n.port), 'cluster', 'info'])
          .toString()
          .includes('cluster_state:ok'),
      ),
    20_000,
    'the cluster to be ok',
  );
  h.configFile({ redis: { cluster: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })) } });
  rt = h.runtime({
    schedules: [{ id: 'noop-cluster', job: 'noop', cron: '0 4 * * *', tz: 'Asia/Dhaka', payload: {} }],
  });
  await rt.history.migrate();
  startWorkers(rt, ['noop']);
  const { port } = await startServer(rt, { port: 0, host: '127.0.0.1' });
  api = `http://127.0.0.1:${port}`;
}, 60_000);
afterAll(async () => {
  await h.close();
  await Promise.all(nodes.map((n) => n.stop()));
});

describe('Redis Cluster with three masters', () => {
  it('is a cluster client over three masters, and every key of pgmaint is in one slot', async () => {
    const client = rt.queues.connection as Cluster;
    expect(client).toBeInstanceOf(Cluster);
    const masters = (await client.call('CLUSTER', 'NODES')) as string;
    expect(masters.split('\n').filter((l) => l.includes('master'))).toHaveLength(3);
    const slot = await client.call('CLUSTER', 'KEYSLOT', `${rt.config.redis.prefix}:noop:id`);
    expect(await client.call('CLUSTER', 'KEYSLOT', `${rt.config.redis.prefix}:backup:wait`)).toBe(slot);
  });

  it('the API enqueues and a worker runs the job', async () => {
    const res = await fetch(`${api}/api/jobs/noop`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ sleepMs: 50 }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const { job, state } = await waitForFinished(rt.queues.get('noop'), id);
    expect(state).toBe('completed');
    expect(job.returnvalue).toEqual({ sleptMs: 50 });
    const { rows } = await h.admin.query(`select outcome from pgmaint.run_history where job_id = $1`, [id]);
    expect(rows).toEqual([{ outcome: 'succeeded' }]);
  });

  it('schedulers sync into the cluster, and the watchdog repairs a lost run', async () => {
    // startServer synced the schedules.
    const queue = rt.queues.get('noop');
    const scheduler = await queue.getJobScheduler('noop-cluster');
    expect(scheduler?.next).toBeGreaterThan(Date.now());
    const jobId = `repeat:noop-cluster:${scheduler!.next}`;
    expect(await queue.getJobState(jobId)).toBe('delayed');
    // A lost write: the pending run vanishes behind BullMQ's back.
    await rt.queues.connection.zrem(`${rt.config.redis.prefix}:noop:delayed`, jobId);
    await rt.queues.connection.del(`${rt.config.redis.prefix}:noop:${jobId}`);
    expect(await rt.scheduler.watchdog(scheduler!.next! + 120_000)).toEqual(['noop-cluster']);
    const delayed = await queue.getDelayed();
    expect(delayed.map((j) => j.repeatJobKey)).toEqual(['noop-cluster']);
    expect(await rt.scheduler.watchdog()).toEqual([]);
  });
});
