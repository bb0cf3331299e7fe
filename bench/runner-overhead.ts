// Per-job overhead of the runner against a bare BullMQ Worker, measured in the same
// run on the same Redis and PostgreSQL: enqueue-to-start latency (p50/p99, one job
// at a time) and throughput of no-op jobs with one worker process.
//   npm run bench:runner [-- --jobs 3000 --samples 300]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/core/config.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createLogger } from '../src/core/logger.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { createRuntime } from '../src/pgmaint.ts';

const { values } = parseArgs({
  options: { jobs: { type: 'string', default: '3000' }, samples: { type: 'string', default: '300' } },
});
const JOBS = Number(values.jobs);
const SAMPLES = Number(values.samples);
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
  completed(): Promise<number>;
  start(): Promise<void>;
  close(): Promise<void>;
}

async function measure(side: Side) {
  // Throughput: a backlog enqueued first, then drained by one worker process.
  await side.enqueueBulk(JOBS);
  const t0 = performance.now();
  await side.start();
  while ((await side.completed()) < JOBS) await new Promise((r) => setTimeout(r, 20));
  const seconds = (performance.now() - t0) / 1000;
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
  return { p50: pct(latencies, 50), p99: pct(latencies, 99), perSecond: JOBS / seconds };
}

function bareSide(): Side {
  const conn = new Redis(redis.url, { maxRetriesPerRequest: null });
  const queue = new Queue('bare', { connection: conn, prefix: '{bare}' });
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
    completed: async () => Number((await conn.get('{bare}:bench:completed')) ?? 0),
    start: async () => {
      worker = new Worker(
        'bare',
        async (job) => {
          cb(job.id!);
          await conn.incr('{bare}:bench:completed');
          return { ok: true };
        },
        { connection: conn, prefix: '{bare}', concurrency: CONCURRENCY },
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

function runnerSide(synchronous: boolean): Side {
  const config = loadConfig({
    DATABASE_URL: pg.url('bench'),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
  });
  config.history.synchronous = synchronous;
  const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
  // Observe starts without changing the job: wrap its handler.
  const noop = rt.registry.get('noop')!;
  // Rows left by an earlier side in this run are not this side's.
  let baseline = 0;
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
    completed: async () =>
      (
        await rt.connections
          .pool('main')
          .query(`select count(*)::int - $1 as n from pgmaint.run_history where outcome = 'succeeded'`, [baseline])
      ).rows[0].n,
    start: async () => {
      baseline = (
        await rt.connections
          .pool('main')
          .query(`select count(*)::int n from pgmaint.run_history where outcome = 'succeeded'`)
      ).rows[0].n;
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
  const bare = await measure(bareSide());
  const runner = await measure(runnerSide(false));
  const sync = await measure(runnerSide(true));
  const cols = [bare, runner, sync];
  const fmt = (f: (m: typeof bare) => number, digits: number) => cols.map((m) => f(m).toFixed(digits));
  const ratio = (f: (m: typeof bare) => number) => [runner, sync].map((m) => `${(f(m) / f(bare)).toFixed(2)}×`);
  const rows = [
    ['', 'bare BullMQ', 'pgmaint', 'pgmaint (history.synchronous)', 'ratio', 'ratio (sync)'],
    ['enqueue→start p50 (ms)', ...fmt((m) => m.p50, 2), ...ratio((m) => m.p50)],
    ['enqueue→start p99 (ms)', ...fmt((m) => m.p99, 2), ...ratio((m) => m.p99)],
    [`no-op jobs/s (${JOBS}, concurrency ${CONCURRENCY})`, ...fmt((m) => m.perSecond, 0), ...ratio((m) => m.perSecond)],
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const r of rows)
    console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
  const ok = runner.perSecond / bare.perSecond >= 0.66;
  console.log(`target: runner throughput ≥ 0.66× bare BullMQ (default settings) — ${ok ? 'met' : 'NOT met'}`);
} finally {
  await redis.stop();
  await pg.stop('immediate');
  fs.rmSync(dir, { recursive: true, force: true });
}
