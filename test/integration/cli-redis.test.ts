// The direct-mode CLI when Redis freezes or goes away around its check: every command that
// reads Redis ends with exit 3 within seconds, one line naming Redis (never a hang, never a
// bare "Command timed out"); an `enqueue --wait` that loses Redis while it follows the run
// says the run was enqueued, with its id, and may still run. Redis is a redis-server of this
// file's own (SIGSTOP, shutdown), or that one behind a proxy that breaks the moment after
// the CLI's check of Redis passed (its first +PONG): frozen, or gone.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisInstance } from '../../src/dev/devstack.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness } from '../support/harness.ts';
import { type Breakage, startTcpProxy, type TcpProxy } from '../support/tcp-proxy.ts';

let h: Harness;
let redis: RedisInstance;
let rt: Runtime;
const proxies: TcpProxy[] = [];

/** Far longer than any command may take: a command still running then hangs. */
const HANG_MS = 30_000;

beforeAll(async () => {
  h = await createHarness('cli_redis');
  redis = await startRedis({ dir: path.join(h.dir, 'own-redis') });
  rt = h.runtime({ env: { REDIS_URL: redis.url } });
  await rt.history.migrate();
});
afterEach(async () => {
  if (redis.process.exitCode === null) redis.process.kill('SIGCONT');
  await h.killChildren();
  for (const p of proxies.splice(0)) await p.close();
});
afterAll(async () => {
  await h.close();
  await redis.stop();
});

/** pgmaint with REDIS_URL at `redisUrl`: its exit code, or "still running" when it hangs. */
function pgmaint(args: string[], redisUrl: string) {
  const p = h.spawnPgmaint(args, { REDIS_URL: redisUrl, LOG_LEVEL: 'warn' });
  return {
    ...p,
    result: Promise.race([p.exited, sleep(HANG_MS).then(() => 'still running')]),
  };
}

/** Every run in the noop queue, in any state. */
async function noopJobs(): Promise<number> {
  const counts = await rt.queues.get('noop').getJobCounts();
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

const REDIS = 'Redis \\(REDIS_URL redis://127\\.0\\.0\\.1:\\d+\\)';
const NOT_ANSWERING = `${REDIS} (did not answer within 2 s|is not reachable \\(connection \\w+\\)|is not connected)`;

describe('Redis breaks right after the check (a proxy: frozen, or gone, after the first +PONG)', () => {
  const cases: [string[], RegExp][] = [
    [['status'], new RegExp(`^pgmaint: ${NOT_ANSWERING}$`)],
    [['schedules'], new RegExp(`^pgmaint: ${NOT_ANSWERING}$`)],
    [['enqueue', 'noop'], new RegExp(`^pgmaint: ${NOT_ANSWERING}; nothing was enqueued, try again$`)],
    [['enqueue', 'noop', '--wait'], new RegExp(`^pgmaint: ${NOT_ANSWERING}; nothing was enqueued, try again$`)],
  ];
  for (const breakage of ['freeze', 'gone'] as Breakage[])
    it.each(cases)(
      `%j, Redis ${breakage === 'freeze' ? 'frozen' : 'gone'}: exit 3, one line naming Redis`,
      async (args, message) => {
        const before = await noopJobs();
        const proxy = await startTcpProxy({ port: redis.port }, { afterFirstPong: breakage });
        proxies.push(proxy);
        const cli = pgmaint(args, proxy.redisUrl);
        const code = await cli.result;
        expect(await Promise.race([proxy.broken, 'not broken'])).toBe(breakage);
        expect(code, cli.output()).toBe(3);
        expect(cli.output().trim()).toMatch(message);
        expect(cli.output()).not.toMatch(/timed out|max retries/i);
        expect(await noopJobs()).toBe(before);
      },
    );
});

describe('enqueue --wait loses Redis while it follows the run', () => {
  /** Enqueues a run no worker takes, and resolves with its id once the CLI follows it. */
  async function following() {
    const cli = pgmaint(['enqueue', 'noop', '--wait'], redis.url);
    await cli.waitFor(/^enqueued: noop job \d+$/m, 20_000);
    const id = /^enqueued: noop job (\d+)$/m.exec(cli.output())![1]!;
    return { cli, id };
  }

  const lost = (id: string, why: string) =>
    new RegExp(
      `^pgmaint: ${REDIS} ${why} while following the run: noop job ${id} was enqueued and may still run; ` +
        'pgmaint history --job noop shows how it ends$',
      'm',
    );

  it('Redis frozen (SIGSTOP): exit 3 naming Redis and the job, which is still there', async () => {
    const { cli, id } = await following();
    redis.process.kill('SIGSTOP');
    const code = await cli.result;
    redis.process.kill('SIGCONT');
    expect(code, cli.output()).toBe(3);
    expect(cli.output()).toMatch(lost(id, 'did not answer within 2 s'));
    expect(await rt.queues.get('noop').getJobState(id)).toBe('waiting');
  });

  it('Redis shut down: exit 3 naming Redis and the job', async () => {
    const { cli, id } = await following();
    await redis.stop();
    try {
      const code = await cli.result;
      expect(code, cli.output()).toBe(3);
      expect(cli.output()).toMatch(lost(id, '(is not reachable \\(connection \\w+\\)|is not connected)'));
    } finally {
      redis = await startRedis({ dir: path.join(h.dir, 'own-redis'), port: redis.port });
    }
  });
});

describe('Redis frozen before the command starts', () => {
  it.each([[['enqueue', 'noop']], [['status']], [['enqueue', 'noop', '--wait']]])(
    '%j: exit 3, REDIS_URL cannot reach it: did not answer within 2 s',
    async (args) => {
      redis.process.kill('SIGSTOP');
      const cli = pgmaint(args, redis.url);
      const code = await cli.result;
      redis.process.kill('SIGCONT');
      expect(code, cli.output()).toBe(3);
      expect(cli.output().trim()).toMatch(
        /^pgmaint: REDIS_URL: cannot reach redis:\/\/127\.0\.0\.1:\d+: did not answer within 2 s$/,
      );
    },
  );
});

describe('a command reads only what it needs', () => {
  it('history reads PostgreSQL only: it answers with Redis away', async () => {
    await redis.stop();
    try {
      const cli = pgmaint(['history', '--json'], redis.url);
      expect(await cli.result, cli.output()).toBe(0);
      expect(JSON.parse(cli.output())).toMatchObject({ runs: expect.any(Array), timeZone: 'Asia/Dhaka' });
    } finally {
      redis = await startRedis({ dir: path.join(h.dir, 'own-redis'), port: redis.port });
    }
  });
});
