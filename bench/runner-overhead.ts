// Per-job overhead of the runner against a bare BullMQ Worker, measured in the same
// run on the same Redis and PostgreSQL: throughput of no-op jobs with one worker
// process (a backlog drained, until the last job's "completed" event: the same
// boundary on every side) and enqueue-to-start latency (p50/p99, one job at a time).
// The sides run interleaved (bare, pgmaint, pgmaint synchronous, bare, …), 5 rounds.
//   npm run bench:runner [-- --jobs 3000 --samples 300 --rounds 5]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/core/config.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createLogger } from '../src/core/logger.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { createRuntime } from '../src/pgmaint.ts';
import { loadAverage, median, printTable, row, type Sample } from './method.ts';

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '3000' },
    samples: { type: 'string', default: '300' },
    rounds: { type: 'string', default: '5' },
  },
});
const JOBS = Number(values.jobs);
const SAMPLES = Number(values.samples);
const ROUNDS = Math.max(3, Number(values.rounds));
const CONCURRENCY = 4;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-'));
fs.chmodSync(dir, 0o755);
const [pg, redis] = await Promise.all([
  startPostgres({ dir: path.join(dir, 'pg') }),
  startRedis({ dir: path.join(dir, 'redis') }),
]);
await createDatabase(pg, 'bench');

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

interface Side {
  name: string;
  /** Enqueues one job and returns its job id. */
  enqueue(): Promise<string>;
  enqueueBulk(n: number): Promise<void>;
  /** Called with the job id when a job's handler starts. */
  onStart(cb: (jobId: string) => void): void;
  /** The queue's name and prefix, for its completed events. */
  queue: { name: string; prefix: string };
  start(): Promise<void>;
  close(): Promise<void>;
}

async function measure(side: Side) {
  // Throughput: a backlog enqueued first, then drained by one worker process, until
  // BullMQ has announced every job completed.
  const eventsConnection = new Redis(redis.url, { maxRetriesPerRequest: null });
  const events = new QueueEvents(side.queue.name, { connection: eventsConnection, prefix: side.queue.prefix });
  await events.waitUntilReady();
  let completed = 0;
  let allDone: () => void = () => undefined;
  const drained = new Promise<void>((r) => (allDone = r));
  events.on('completed', () => {
    if (++completed === JOBS) allDone();
  });
  await side.enqueueBulk(JOBS);
  const t0 = performance.now();
  await side.start();
  await drained;
  const drainMs = performance.now() - t0;
  await events.close();
  await eventsConnection.quit();
  // Latency: one job at a time into the now idle worker.
  const starts = new Map<string, number>();
  let notify: (() => void) | undefined;
  side.onStart((jobId) => {
    starts.set(jobId, performance.now());
    notify?.();
  });
  const latencies: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const t = performance.now();
    const id = await side.enqueue();
    while (!starts.has(id)) await new Promise<void>((r) => (notify = r));
    latencies.push(starts.get(id)! - t);
  }
  latencies.sort((a, b) => a - b);
  await side.close();
  return { p50: pct(latencies, 50), p99: pct(latencies, 99), drainMs };
}

function bareSide(round: number): Side {
  const conn = new Redis(redis.url, { maxRetriesPerRequest: null });
  const prefix = `{bare-${round}}`;
  const queue = new Queue('bare', { connection: conn, prefix });
  let cb: (jobId: string) => void = () => undefined;
  let worker: Worker | undefined;
  return {
    name: 'bare BullMQ Worker',
    enqueue: async () => (await queue.add('noop', {}, { removeOnComplete: { count: 500 } })).id!,
    enqueueBulk: async (n) =>
      void (await queue.addBulk(
        Array.from({ length: n }, (_, i) => ({
          name: 'noop',
          data: { i },
          opts: { removeOnComplete: { count: 500 } },
        })),
      )),
    onStart: (f) => (cb = f),
    queue: { name: 'bare', prefix },
    start: async () => {
      worker = new Worker(
        'bare',
        async (job) => {
          cb(job.id!);
          return { ok: true };
        },
        { connection: conn, prefix, concurrency: CONCURRENCY },
      );
      await worker.waitUntilReady();
    },
    close: async () => {
      await worker?.close();
      await queue.close();
      await conn.quit();
    },
  };
}

function runnerSide(synchronous: boolean, round: number): Side {
  const config = loadConfig({
    DATABASE_URL: pg.url('bench'),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
  });
  config.history.synchronous = synchronous;
  config.redis.prefix = `{pgmaint-${synchronous ? 'sync' : 'async'}-${round}}`;
  const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
  // Observe starts without changing the job: wrap its handler.
  const noop = rt.registry.get('noop')!;
  const original = noop.def.handler;
  let cb: (jobId: string) => void = () => undefined;
  noop.def.handler = async (ctx, payload) => {
    cb(ctx.jobId);
    return original(ctx, payload);
  };
  return {
    name: 'pgmaint runner',
    enqueue: async () => (await rt.queues.enqueue('noop', {})).job.id!,
    enqueueBulk: async (n) => {
      for (let i = 0; i < n; i += 200)
        await Promise.all(Array.from({ length: Math.min(200, n - i) }, () => rt.queues.enqueue('noop', {})));
    },
    onStart: (f) => (cb = f),
    queue: { name: 'noop', prefix: config.redis.prefix },
    start: async () => {
      startWorkers(rt, ['noop']);
    },
    close: () => rt.close(),
  };
}

try {
  const setup = createRuntime({
    config: loadConfig({ DATABASE_URL: pg.url('bench'), REDIS_URL: redis.url, BACKUP_DIR: dir }),
    logger: createLogger('warn'),
    schedules: [],
  });
  await setup.history.migrate();
  await setup.close();
  console.log(`load average before: ${loadAverage()}`);
  const names = ['bare BullMQ', 'pgmaint', 'pgmaint (history.synchronous)'];
  const runs: Awaited<ReturnType<typeof measure>>[][] = [[], [], []];
  for (let r = 0; r < ROUNDS; r++) {
    runs[0]!.push(await measure(bareSide(r)));
    runs[1]!.push(await measure(runnerSide(false, r)));
    runs[2]!.push(await measure(runnerSide(true, r)));
    console.error(`round ${r + 1}: ${runs.map((x, i) => `${names[i]} ${x.at(-1)!.drainMs.toFixed(0)} ms`).join(', ')}`);
  }
  const sample = (i: number, f: (m: (typeof runs)[0][0]) => number): Sample => ({
    name: names[i]!,
    ms: runs[i]!.map(f),
  });
  const drain = (i: number) => sample(i, (m) => m.drainMs);
  const rows: string[][] = [];
  for (const i of [1, 2]) {
    const tag = i === 2 ? ' (synchronous history)' : '';
    rows.push(
      row(`drain ${JOBS} no-op jobs, concurrency ${CONCURRENCY}${tag} (ms)`, drain(i), drain(0), '', 'ms'),
      row(
        `enqueue→start p50${tag} (ms)`,
        sample(i, (m) => m.p50),
        sample(0, (m) => m.p50),
        '',
        'ms',
      ),
      row(
        `enqueue→start p99${tag} (ms)`,
        sample(i, (m) => m.p99),
        sample(0, (m) => m.p99),
        '',
        'ms',
      ),
    );
  }
  const perSecond = (i: number) => JOBS / (median(drain(i).ms) / 1000);
  rows.push(
    ['jobs/s (median drain)', perSecond(1).toFixed(0), perSecond(0).toFixed(0), '', ''],
    ['jobs/s, synchronous history', perSecond(2).toFixed(0), perSecond(0).toFixed(0), '', ''],
  );
  printTable(
    `runner against bare BullMQ, ${ROUNDS} rounds interleaved; median (min–max)`,
    ['', 'pgmaint', 'bare BullMQ', 'ratio', ''],
    rows,
  );
  const throughput = perSecond(1) / perSecond(0);
  console.log(
    `target: runner throughput ≥ 0.66× bare BullMQ (median of ${ROUNDS}, default settings) — ` +
      `${throughput >= 0.66 ? 'met' : 'NOT met'} (${throughput.toFixed(2)}×)`,
  );
  console.log(`load average after: ${loadAverage()}`);
} finally {
  await redis.stop();
  await pg.stop('immediate');
  fs.rmSync(dir, { recursive: true, force: true });
}
