// Redis slow, frozen (SIGSTOP) or gone under a running server: every API route, Bull
// Board's API and `pgmaint enqueue` answer within 5 s, naming Redis; /metrics still
// answers and counts the failed reads; an enqueue that was refused is never carried out
// afterwards; and once Redis is back the same server works again. The server runs
// against a redis-server of this file's own, so stopping it touches no other file.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { type Answer, ask as askServer } from '../support/ask.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { startRedis, type RedisInstance } from '../../src/dev/devstack.ts';
import { startServer } from '../../src/http/server.ts';
import { BOARD_PATH, ROUTES } from '../../src/http/routes.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';

let h: Harness;
let redis: RedisInstance;
let env: Record<string, string>;
let rt: Runtime;
let base: string;

/** What every request must do: answer within this, whatever Redis does. */

beforeAll(async () => {
  h = await createHarness('redis-outage');
  // Append-only, as in docker-compose: a restart keeps the queues, so "nothing ran later" can be counted.
  redis = await startRedis({ dir: path.join(h.dir, 'own-redis'), appendonly: true });
  env = { REDIS_URL: redis.url };
  rt = h.runtime({ env });
  await rt.history.migrate();
  // No health cache: each scrape reads afresh, so the one during the outage shows it.
  const { port } = await startServer(rt, { port: 0, host: '127.0.0.1', sampleIntervalMs: 0 });
  base = `http://127.0.0.1:${port}`;
  // A worker of its own runtime: it waits through every outage, and would run any job
  // that reached the queue late.
  startWorkers(h.runtime({ env }), ['noop']);
});

afterAll(async () => {
  if (redis.process.exitCode === null) redis.process.kill('SIGCONT');
  await h.close();
  await redis.stop();
});

/** One request with the 5 s deadline, to this file's server. */
const ask = (method: string, url: string, body?: { json?: unknown; form?: string }) =>
  askServer(base, method, url, body);

/** A request to every route of the route table (a new route is covered by itself). */
function routeRequests() {
  return ROUTES.map((r) => {
    const url = r.path.replace(':name', 'noop').replace(':queue', 'noop').replace(':id', '1');
    // A well-formed body for each, so what is asked of Redis is what answers.
    const json = r.path.startsWith('/api/governor/') ? { queue: 'vacuum-analyze' } : { sleepMs: 0 };
    const body = r.body === 'json' ? { json } : r.body === 'form' ? { form: 'token=not-a-token' } : undefined;
    return { route: r, label: `${r.method.toUpperCase()} ${r.path}`, send: () => ask(r.method, url, body) };
  });
}

/** Every route, Bull Board's API and its "add job" answer, and each answer says what it should about Redis. */
async function expectEveryRouteAnswers(): Promise<void> {
  const answers = await Promise.all(routeRequests().map(async (r) => ({ ...r, answer: await r.send() })));
  for (const { route, label, answer } of answers) {
    const seen = `${label} answered ${answer.status} ${answer.text.slice(0, 300)}`;
    if (route.redis === 'required') {
      expect(answer.status, seen).toBe(503);
      expect(JSON.parse(answer.text).error, seen).toMatch(/^Redis \(REDIS_URL redis:\/\/127\.0\.0\.1:\d+\/?\)/);
    } else if (route.redis === 'partial') {
      expect(answer.status, seen).not.toBe(500);
      expect(answer.text, seen).toMatch(/redis/i);
    } else expect(answer.status, seen).toBeLessThan(500);
  }
  const enqueue = answers.find((a) => a.route.path === '/api/jobs/:name')!.answer;
  expect(JSON.parse(enqueue.text).error).toMatch(/nothing was enqueued/);

  const metrics = answers.find((a) => a.route.path === '/metrics')!.answer;
  expect(metrics.status).toBe(200);
  expect(metrics.text).toMatch(/^pgmaint_health_read_errors\{part="redis"\} 1$/m);
  expect(metrics.text).toMatch(/^pgmaint_health_read_errors\{part="queues"\} 1$/m);

  const board = await ask('get', `${BOARD_PATH}/api/queues`);
  expect(board.status, board.text).toBe(503);
  expect(JSON.parse(board.text).message).toMatch(/^Redis \(REDIS_URL /);
  const boardAdd = await ask('post', `${BOARD_PATH}/api/queues/noop/add`, {
    json: { name: 'noop', data: { payload: { target: 'main' } }, options: {} },
  });
  expect(boardAdd.status, boardAdd.text).toBe(503);
  expect(JSON.parse(boardAdd.text).message).toMatch(/nothing was enqueued/);
}

/** `pgmaint enqueue noop` gives up on its own (exit 3, naming REDIS_URL) instead of hanging. */
async function expectCliEnqueueRefused(): Promise<void> {
  const cli = h.spawnPgmaint(['enqueue', 'noop'], env);
  const code = await Promise.race([cli.exited, sleep(30_000).then(() => 'still running')]);
  expect(code, cli.output()).toBe(3);
  expect(cli.output()).toMatch(/^pgmaint: REDIS_URL: .*(cannot reach|nothing was enqueued)/m);
}

/** The noop jobs in the queue, in any state (the worker keeps finished ones). */
async function noopJobs(): Promise<number> {
  const counts = await rt.queues.get('noop').getJobCounts();
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

/** Once Redis answers again: the same server is ready, enqueues, and the job runs. */
async function expectServerWorksAgain(): Promise<void> {
  await waitUntil(async () => (await ask('get', '/readyz')).status === 200, 30_000, 'the server to be ready again');
  const res = await ask('post', '/api/jobs/noop', { json: { sleepMs: 0 } });
  expect(res.status, res.text).toBe(202);
  const { id } = JSON.parse(res.text) as { id: string };
  expect((await waitForFinished(rt.queues.get('noop'), id, 30_000)).state).toBe('completed');
  // Its run-history row is written in a batch moments later; the next count starts after it.
  await waitUntil(
    async () => (await rt.history.list({ job: 'noop', limit: 1000 })).some((r) => r.job_id === id && r.finished_at),
    30_000,
    `the run history row of noop job ${id}`,
  );
}

/** Nothing that was refused ran later: no job beyond the `before` count reached the queue or the run history. */
async function expectNothingCarriedOut(before: { jobs: number; runs: number }): Promise<void> {
  // Long enough for a late write to land and the waiting worker to take it.
  await sleep(3000);
  expect(await noopJobs()).toBe(before.jobs);
  expect((await rt.history.list({ job: 'noop', limit: 1000 })).length).toBe(before.runs);
}

async function counted() {
  return { jobs: await noopJobs(), runs: (await rt.history.list({ job: 'noop', limit: 1000 })).length };
}

describe('Redis frozen (SIGSTOP) under the server', () => {
  it('all routes, the board and pgmaint enqueue answer in 5 s naming Redis; nothing refused runs later', async () => {
    const before = await counted();
    const metricsBefore = await ask('get', '/metrics');
    expect(metricsBefore.text).not.toMatch(/pgmaint_health_read_errors\{part="redis"\}/);
    redis.process.kill('SIGSTOP');
    try {
      await expectEveryRouteAnswers();
      await expectCliEnqueueRefused();
    } finally {
      redis.process.kill('SIGCONT');
    }
    await expectNothingCarriedOut(before);
    await expectServerWorksAgain();
  });
});

describe('Redis slow: writes held back (CLIENT PAUSE WRITE) past the enqueue deadline', () => {
  const PAUSE_MS = 6000;

  it('the enqueue is refused in 5 s; the add that reached Redis is not carried out when the pause ends', async () => {
    const before = await counted();
    const admin = new Redis(redis.url);
    // Redis counts the error replies it sends by their first word: the gate's refusals show there.
    const refusals = async () =>
      Number(/errorstat_PGMAINT_ADD_TOO_LATE:count=(\d+)/.exec(await admin.info('errorstats'))?.[1] ?? 0);
    const refusedBefore = await refusals();
    try {
      // Reads (the enqueue's clock reading among them) go through; the add itself waits in Redis.
      await admin.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'WRITE');
      const pausedAt = Date.now();
      const [res, boardAdd] = await Promise.all([
        ask('post', '/api/jobs/noop', { json: { sleepMs: 0 } }),
        ask('post', `${BOARD_PATH}/api/queues/noop/add`, {
          json: { name: 'noop', data: { payload: { target: 'main' } }, options: {} },
        }),
      ]);
      expect(res.status, res.text).toBe(503);
      expect(JSON.parse(res.text).error).toMatch(/^Redis \(REDIS_URL .*nothing was enqueued/);
      expect(boardAdd.status, boardAdd.text).toBe(503);
      expect(JSON.parse(boardAdd.text).message).toMatch(/nothing was enqueued/);
      // When the pause ends the held add runs in Redis: it must add nothing, and Redis says it refused it.
      await sleep(PAUSE_MS + 500 - (Date.now() - pausedAt));
      await expectNothingCarriedOut(before);
      expect(await refusals()).toBeGreaterThan(refusedBefore);
    } finally {
      await admin.call('CLIENT', 'UNPAUSE').catch(() => undefined);
      admin.disconnect();
    }
    await expectServerWorksAgain();
  });

  it('Redis itself refuses an add stamped longer ago than the deadline, whoever sends it', async () => {
    const before = await counted();
    const [seconds, micros] = await rt.queues.connection.time();
    const stampedLongAgo = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - 10_000;
    // A plain BullMQ queue on the server's connection: its add reaches Redis with the stale stamp as is.
    const plain = new Queue('noop', { connection: rt.queues.connection, prefix: rt.config.redis.prefix });
    try {
      const add = plain.add('noop', { payload: { target: 'main' } }, { timestamp: stampedLongAgo });
      await expect(add).rejects.toThrow(/PGMAINT_ADD_TOO_LATE Redis ran this add 1\d{4} ms after its stamp/);
    } finally {
      await plain.close();
    }
    expect(await noopJobs()).toBe(before.jobs);
  });
});

describe('Redis stopped under the server, then started again', () => {
  it('every route, the board and pgmaint enqueue answer within 5 s naming Redis; the server works again', async () => {
    const before = await counted();
    await redis.stop();
    await expectEveryRouteAnswers();
    await expectCliEnqueueRefused();
    redis = await startRedis({ dir: path.join(h.dir, 'own-redis'), port: redis.port, appendonly: true });
    await expectNothingCarriedOut(before);
    await expectServerWorksAgain();
  });
});

describe("Bull Board's changes held back in Redis (CLIENT PAUSE WRITE) past their deadline", () => {
  const PAUSE_MS = 3500;

  it('retry, promote, remove and clean are refused in 5 s naming Redis, not done when Redis goes on', async () => {
    const queue = rt.queues.get('noop');
    const noop = { payload: { target: 'main', sleepMs: 0 }, trigger: 'ad-hoc' };
    // Failed jobs (a payload the worker refuses), delayed ones, and a completed one.
    const refused = { payload: { target: 'main', bogus: 1 } as never, trigger: 'ad-hoc' };
    const [f1, f2] = [await queue.add('noop', refused), await queue.add('noop', refused)];
    const [d1, d2, d3, d4] = await Promise.all([1, 2, 3, 4].map(() => queue.add('noop', noop, { delay: 600_000 })));
    const c1 = await queue.add('noop', noop);
    for (const [job, state] of [
      [f1, 'failed'],
      [f2, 'failed'],
      [c1, 'completed'],
    ] as const)
      expect((await waitForFinished(queue, job!.id!, 30_000)).state).toBe(state);
    const board = `${BOARD_PATH}/api/queues/noop`;

    // With Redis answering, each change is made (and BullMQ's scripts for them are loaded in Redis).
    expect((await ask('put', `${board}/${f1.id}/retry`)).status).toBe(204);
    expect((await ask('put', `${board}/${d1!.id}/promote`)).status).toBe(204);
    expect((await ask('put', `${board}/${d2!.id}/clean`)).status).toBe(204);
    expect(await queue.getJob(d2!.id!)).toBeFalsy();
    // The runs those started end first; then the clean, and one more completed job.
    await waitUntil(async () => (await queue.getJobState(d1!.id!)) === 'completed', 30_000, 'the promoted job');
    await waitUntil(
      async () => (await rt.history.list({ job: 'noop', limit: 1000 })).filter((r) => r.job_id === f1.id).length === 2,
      30_000,
      'the retried job',
    );
    await waitUntil(async () => (await queue.getJobState(f1.id!)) === 'failed', 30_000, 'the retried job to fail');
    // Bull Board's clean leaves what finished in its last 5 s (its grace): the jobs above may stay.
    expect((await ask('put', `${board}/clean/completed`)).status).toBe(200);
    const c2 = await queue.add('noop', noop);
    expect((await waitForFinished(queue, c2.id!, 30_000)).state).toBe('completed');
    await waitUntil(
      async () => {
        const rows = (await rt.history.list({ job: 'noop', limit: 1000 })).filter((r) => r.finished_at);
        const runs = (id: string | undefined) => rows.filter((r) => r.job_id === id).length;
        return runs(f1.id) === 2 && [f2.id, c1.id, d1!.id, c2.id].every((id) => runs(id) === 1);
      },
      30_000,
      'their run history rows',
    );
    const before = await counted();
    // By the held clean below, these are past the board's 5 s grace: a clean carried out would remove them.
    const completed = (await queue.getJobCounts('completed')).completed!;
    expect(completed).toBeGreaterThan(0);

    const admin = new Redis(redis.url);
    const refusals = async () =>
      Number(/errorstat_PGMAINT_WRITE_TOO_LATE:count=(\d+)/.exec(await admin.info('errorstats'))?.[1] ?? 0);
    const refusedBefore = await refusals();
    // Redis stops carrying out writes just as the board sends the change (its reads before it go through):
    // the change waits in Redis past the client's timeout, and runs when the pause ends.
    const commands = rt.queues.connection as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    const heldAtChange = async (scripts: string[], send: () => Promise<Answer>) => {
      const names = Object.keys(commands).filter((k) =>
        scripts.some((s) => k.startsWith(`${s}:`) && !/Buffer$/.test(k)),
      );
      expect(names.length, scripts.join(', ')).toBeGreaterThan(0);
      const real = new Map(names.map((n) => [n, commands[n]!]));
      let pausedAt = 0;
      for (const name of names)
        commands[name] = async (...args: unknown[]) => {
          if (!pausedAt) {
            await admin.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'WRITE');
            pausedAt = Date.now();
          }
          return real.get(name)!.apply(rt.queues.connection, args);
        };
      try {
        const answer = await send();
        expect(pausedAt, `the board sent ${scripts.join(' or ')}`).toBeGreaterThan(0);
        await sleep(PAUSE_MS + 500 - (Date.now() - pausedAt));
        return answer;
      } finally {
        for (const [name, fn] of real) commands[name] = fn;
      }
    };
    let answers: Answer[];
    try {
      answers = [
        await heldAtChange(['reprocessJob', 'retryJob'], () => ask('put', `${board}/${f2.id}/retry`)),
        await heldAtChange(['promote'], () => ask('put', `${board}/${d3!.id}/promote`)),
        await heldAtChange(['removeJob'], () => ask('put', `${board}/${d4!.id}/clean`)),
        await heldAtChange(['cleanJobsInSet'], () => ask('put', `${board}/clean/completed`)),
      ];
    } finally {
      await admin.call('CLIENT', 'UNPAUSE').catch(() => undefined);
    }
    for (const answer of answers) expect(answer.status, answer.text).toBe(503);
    // Each held change ran in Redis when the pause ended: none changed anything, and Redis says it refused them.
    await expectNothingCarriedOut(before);
    expect(await queue.getJobState(f2.id!)).toBe('failed');
    expect(await queue.getJobState(d3!.id!)).toBe('delayed');
    expect(await queue.getJobState(d4!.id!)).toBe('delayed');
    expect((await queue.getJobCounts('completed')).completed).toBe(completed);
    expect(await refusals()).toBeGreaterThanOrEqual(refusedBefore + 4);
    admin.disconnect();
    for (const answer of answers)
      expect(JSON.parse(answer.text).message).toMatch(/^Redis \(REDIS_URL .*nothing was changed \(BullMQ's \w+\)/);
    await expectServerWorksAgain();
  });
});
