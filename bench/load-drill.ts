// Fault drill "10,000 jobs through the API": a real server and two worker processes
// on a throwaway PostgreSQL and an append-only Redis. Every job must complete, the
// run history must hold one row per job, and Redis memory must come back to where
// it stood once the retention (worker.keepCompleted) was full — it must not grow
// with the number of jobs run.
//   npm run drill:load [-- --jobs 10000]
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '10000' } } });
const JOBS = Number(values.jobs);
const WARMUP = 1000;
const TOKEN = 'load-drill-admin-token-0123456789';
const BIN = path.resolve(import.meta.dirname, '../bin/pgmaint.js');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-load-'));
fs.chmodSync(dir, 0o755);
const [server, redisServer] = await Promise.all([
  startPostgres({ dir: path.join(dir, 'pg') }),
  startRedis({ dir: path.join(dir, 'redis'), appendonly: true }),
]);
await createDatabase(server, 'pgmaint');
fs.writeFileSync(path.join(dir, 'pgmaint.json'), JSON.stringify({ worker: { keepCompleted: 500, keepFailed: 2000 } }));
const env = {
  ...process.env,
  DATABASE_URL: server.url('pgmaint'),
  REDIS_URL: redisServer.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: path.join(dir, 'pgmaint.json'),
  ADMIN_TOKEN: TOKEN,
  PORT: '0',
  LOG_LEVEL: 'info',
  ENQUEUE_RATE_LIMIT: String(JOBS * 10),
};
const children: ChildProcess[] = [];
function start(args: string[], ready: RegExp): Promise<string> {
  const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d;
      if (ready.test(out)) resolve(out);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => reject(new Error(`${args[0]} exited ${code}: ${out.slice(-2000)}`)));
  });
}

const serverOut = await start(['server'], /server listening/);
const port = Number(/"port":(\d+)/.exec(serverOut)![1]);
await Promise.all([
  start(['worker', '--queues', 'noop'], /worker started/),
  start(['worker', '--queues', 'noop'], /worker started/),
]);
const redis = new Redis(redisServer.url);
const db = new pg.Client({ connectionString: server.url('pgmaint') });
await db.connect();

const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
const completed = async () => Number(await redis.zcard('{pgmaint}:noop:completed'));
const historyRows = async () =>
  Number(
    (await db.query(`select count(*) as n from pgmaint.run_history where job = 'noop' and outcome = 'succeeded'`))
      .rows[0].n,
  );

async function enqueueThroughApi(n: number): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < n) {
      next++;
      const res = await fetch(`http://127.0.0.1:${port}/api/jobs/noop`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: '{}',
      });
      if (res.status !== 202) throw new Error(`enqueue answered ${res.status}: ${await res.text()}`);
    }
  };
  await Promise.all(Array.from({ length: 32 }, lane));
  return performance.now() - t0;
}

async function drain(expectedRows: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const waiting = await redis.llen('{pgmaint}:noop:wait');
    const active = await redis.llen('{pgmaint}:noop:active');
    if (waiting === 0 && active === 0 && (await historyRows()) >= expectedRows) return performance.now() - t0;
    await new Promise((r) => setTimeout(r, 250));
  }
}

const empty = await usedMemory();
console.error(`warm-up: ${WARMUP} jobs…`);
await enqueueThroughApi(WARMUP);
await drain(WARMUP);
await new Promise((r) => setTimeout(r, 1000));
const afterWarmup = await usedMemory();

console.error(`${JOBS} jobs through the API…`);
const enqueueMs = await enqueueThroughApi(JOBS);
const peak = await usedMemory();
const drainMs = await drain(WARMUP + JOBS);
await new Promise((r) => setTimeout(r, 1000));
const after = await usedMemory();
const rows = (await historyRows()) - WARMUP;
const failed = Number(await redis.zcard('{pgmaint}:noop:failed'));
const keptCompleted = await completed();

const mb = (b: number) => (b / 1048576).toFixed(2);
console.log(
  `jobs enqueued through POST /api/jobs/noop: ${JOBS} in ${(enqueueMs / 1000).toFixed(1)} s ` +
    `(${Math.round(JOBS / (enqueueMs / 1000))}/s, 32 clients)`,
);
console.log(
  `all done ${(drainMs / 1000).toFixed(1)} s after the last enqueue; failed: ${failed}; run history rows ` +
    `(succeeded): ${rows}`,
);
console.log(
  `Redis used_memory MB: empty ${mb(empty)}, retention full after ${WARMUP} jobs ${mb(afterWarmup)}, at the end of ` +
    `enqueueing ${mb(peak)}, after ${JOBS} more ${mb(after)} (${(after / afterWarmup).toFixed(2)}× of the ` +
    `retention-full baseline); completed jobs kept: ${keptCompleted}`,
);
const ok = rows === JOBS && failed === 0 && after <= afterWarmup * 1.1;
console.log(ok ? 'drill passed' : 'drill FAILED');

redis.disconnect();
await db.end();
for (const c of children) c.kill('SIGTERM');
await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.on('exit', r)))));
await redisServer.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
