// What one deployment (one server, one worker, one Redis) holds as its fleet grows:
// 10, 100 and 1,000 target databases in one PostgreSQL 15 cluster, each with two
// partitioned tables and the default schedules. Per fleet size it measures, from outside
// the processes: the server's start-up to /healthz, the schedulers, the sessions each
// process holds idle and at its peak (pg_stat_activity, each session mapped to its
// process through `ss`), /api/status, /metrics (time and size) and `pgmaint status
// --json` through the API, and a fleet-wide create-partitions run. Each timed read runs
// `rounds` times; a row shows the median and min–max, and the figure per target.
//   npm run bench:fleet [-- --targets 10,100,1000 --rounds 3 --budget 10]
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Queue } from 'bullmq';
import pg from 'pg';
import { freePort, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { fmt, loadAverage, median, printTable, type Sample } from './method.ts';

const { values } = parseArgs({
  options: {
    targets: { type: 'string', default: '10,100,1000' },
    rounds: { type: 'string', default: '3' },
    budget: { type: 'string', default: '10' },
    keep: { type: 'boolean', default: false },
  },
});
const SIZES = values.targets.split(',').map(Number);
const ROUNDS = Math.max(3, Number(values.rounds));
const BUDGET = Number(values.budget);
const run = promisify(execFile);
const BIN = path.resolve(import.meta.dirname, '../bin/pgmaint.js');
const TOKEN = 'fleet-bench-admin-token-0123456789';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-fleet-'));
fs.chmodSync(dir, 0o755);
const pgi = await startPostgres({
  dir: path.join(dir, 'pg'),
  settings: { max_connections: 1200, shared_buffers: '256MB', fsync: 'off', synchronous_commit: 'off' },
});
const redis = await startRedis({ dir: path.join(dir, 'redis') });
const admin = new pg.Pool({ connectionString: pgi.url(), max: 2 });

const dbName = (i: number) => `fleet_${String(i).padStart(4, '0')}`;
const dbUrl = (name: string) => pgi.url(name);

/** The template every target is copied from: two partitioned tables, as in the dairy ERP. */
async function makeTemplate(): Promise<void> {
  await admin.query('create database fleet_template');
  const t = new pg.Client({ connectionString: dbUrl('fleet_template') });
  await t.connect();
  await t.query(`create schema sales; create schema iot;
    create table sales.sale_order (id bigint, date_order timestamptz not null, amount numeric)
      partition by range (date_order);
    create table iot.sensor_reading (id bigint, read_at timestamptz not null, value double precision)
      partition by range (read_at);`);
  await t.end();
}

let created = 0;
async function ensureTargets(n: number): Promise<void> {
  for (; created < n; created++) await admin.query(`create database ${dbName(created + 1)} template fleet_template`);
}

function writeConfig(n: number): string {
  const targets: Record<string, object> = {};
  const partitions: object[] = [];
  for (let i = 1; i <= n; i++) {
    const name = dbName(i);
    targets[name] = { url: dbUrl(name), schedules: 'default' };
    partitions.push(
      { table: 'sales.sale_order', column: 'date_order', interval: 'month', retention: '24 months', target: name },
      { table: 'iot.sensor_reading', column: 'read_at', interval: 'day', retention: '90 days', target: name },
    );
  }
  const file = path.join(dir, `fleet-${n}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify({
      targets,
      partitions,
      redis: { prefix: `{fleet${n}}` },
      connections: { budget: BUDGET },
      // Every run of the fleet-wide round stays countable.
      worker: { keepCompleted: 10_000, keepFailed: 10_000 },
    }),
  );
  return file;
}

interface Proc {
  child: ChildProcess;
  out: () => string;
  stop(): Promise<void>;
}

function startProcess(role: string, env: Record<string, string>): Proc {
  const child = spawn(process.execPath, [BIN, role], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return {
    child,
    out: () => out,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Sessions on the cluster per client process id, through the clients' ports. */
async function sessionsByPid(): Promise<Map<number, number>> {
  const { rows } = await admin.query<{ port: number }>(
    `select client_port as port from pg_stat_activity
      where backend_type = 'client backend' and application_name like 'pgmaint%' and client_port is not null`,
  );
  const ports = new Set(rows.map((r) => r.port));
  const ss = await run('ss', ['-Htnp', 'state', 'established'], { maxBuffer: 64 << 20 });
  const counts = new Map<number, number>();
  for (const line of ss.stdout.split('\n')) {
    const m = /\S+:(\d+)\s+\S+:(\d+)\s+users:\(\("[^"]*",pid=(\d+)/.exec(line);
    if (!m || Number(m[2]) !== pgi.port || !ports.has(Number(m[1]))) continue;
    counts.set(Number(m[3]), (counts.get(Number(m[3])) ?? 0) + 1);
  }
  return counts;
}

/** Samples the sessions of the given processes every 200 ms until stopped; keeps each one's peak. */
function peakWatcher(pids: () => number[]) {
  const peak = new Map<number, number>();
  let on = true;
  const loop = (async () => {
    while (on) {
      const counts = await sessionsByPid().catch(() => new Map<number, number>());
      for (const pid of pids()) peak.set(pid, Math.max(peak.get(pid) ?? 0, counts.get(pid) ?? 0));
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    async stop() {
      on = false;
      await loop;
      return peak;
    },
  };
}

async function timedFetch(url: string, init?: RequestInit): Promise<{ ms: number; bytes: number; status: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(120_000) });
  const body = await res.arrayBuffer();
  return { ms: performance.now() - t0, bytes: body.byteLength, status: res.status };
}

async function until(what: string, ok: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function runCli(args: string[], env: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  await run(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return performance.now() - t0;
}

const sample = (name: string, ms: number[]): Sample => ({ name, ms });
const perTarget = (s: Sample, n: number) => `${(median(s.ms) / n).toFixed(2)} ms`;

const rows: string[][] = [];
const sessionRows: string[][] = [];
const verdicts: string[] = [];
console.log(`load average before: ${loadAverage()}`);
await makeTemplate();

for (const n of SIZES) {
  console.error(`\n== ${n} targets`);
  await ensureTargets(n);
  const port = await freePort();
  const env = {
    DATABASE_URL: dbUrl(dbName(1)),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
    PGMAINT_CONFIG: writeConfig(n),
    ADMIN_TOKEN: TOKEN,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
  };
  fs.mkdirSync(env.BACKUP_DIR, { recursive: true });
  const api = `http://127.0.0.1:${port}`;
  const auth = { headers: { authorization: `Bearer ${TOKEN}` } };

  const startup: number[] = [];
  let server: Proc | undefined;
  // Start-up, `rounds` times: from spawn to the first 200 from /healthz; the last one stays up.
  for (let r = 0; r < ROUNDS; r++) {
    await server?.stop();
    const t0 = performance.now();
    server = startProcess('server', env);
    await until('/healthz', async () => (await fetch(`${api}/healthz`)).ok, 120_000);
    startup.push(performance.now() - t0);
  }
  const { schedules } = (await (await fetch(`${api}/api/schedules`, auth)).json()) as { schedules: unknown[] };
  const worker = startProcess('worker', env);
  await until('worker started', async () => /worker started/.test(worker.out()), 120_000);
  const pids = () => [server!.child.pid!, worker.child.pid!];
  const peaks = peakWatcher(pids);

  const status: number[] = [];
  const metrics: number[] = [];
  const cli: number[] = [];
  let metricsBytes = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const s = await timedFetch(`${api}/api/status`, auth);
    if (s.status !== 200) throw new Error(`/api/status answered ${s.status}`);
    status.push(s.ms);
    const m = await timedFetch(`${api}/metrics`, auth);
    if (m.status !== 200) throw new Error(`/metrics answered ${m.status}`);
    metrics.push(m.ms);
    metricsBytes = m.bytes;
    cli.push(await runCli(['status', '--json'], { PGMAINT_URL: api, PGMAINT_TOKEN: TOKEN }));
  }

  // A fleet-wide run: create-partitions on every target, enqueued at once, timed to the last one's end
  // (the schedules' next runs wait delayed meanwhile: only finished runs are counted).
  const queue = new Queue('create-partitions', { connection: { url: redis.url }, prefix: `{fleet${n}}` });
  const before = await finished(queue);
  const t0 = performance.now();
  const enq = await fetch(`${api}/api/jobs/create-partitions`, {
    method: 'POST',
    headers: { ...auth.headers, 'content-type': 'application/json' },
    body: JSON.stringify({ targets: 'all' }),
  });
  if (!enq.ok) throw new Error(`enqueue on all targets answered ${enq.status}: ${await enq.text()}`);
  await until('the fleet-wide run', async () => (await finished(queue)) >= before + n, 30 * 60_000);
  const failed = await queue.getJobCountByTypes('failed');
  await queue.close();
  const fleetRun = performance.now() - t0;
  const peak = await peaks.stop();
  // Idle: after the pools' idle timeout, what each process still holds.
  await new Promise((r) => setTimeout(r, 15_000));
  const idle = await sessionsByPid();

  const st = sample('status', status);
  const me = sample('metrics', metrics);
  const cl = sample('cli', cli);
  const su = sample('startup', startup);
  rows.push(
    [`${n}`, 'start-up to /healthz', fmt(su, 's'), perTarget(su, n)],
    [`${n}`, 'schedulers', `${schedules.length}`, `${(schedules.length / n).toFixed(1)}`],
    [`${n}`, '/api/status', fmt(st, 'ms'), perTarget(st, n)],
    [`${n}`, `/metrics (${Math.round(metricsBytes / 1024)} kB)`, fmt(me, 'ms'), perTarget(me, n)],
    [`${n}`, 'pgmaint status --json (remote)', fmt(cl, 'ms'), perTarget(cl, n)],
    [
      `${n}`,
      `create-partitions on every target (${failed} failed)`,
      `${(fleetRun / 1000).toFixed(1)} s`,
      `${(fleetRun / n).toFixed(0)} ms`,
    ],
  );
  const [sPid, wPid] = pids();
  sessionRows.push([
    `${n}`,
    `${idle.get(sPid!) ?? 0} / ${idle.get(wPid!) ?? 0}`,
    `${peak.get(sPid!) ?? 0} / ${peak.get(wPid!) ?? 0}`,
    `${BUDGET}`,
  ]);
  if (n >= 1000) {
    const check = (what: string, ok: boolean) => verdicts.push(`${ok ? 'met' : 'NOT met'}: ${what}`);
    check(
      `idle sessions at ${n} targets are 0 (server ${idle.get(sPid!) ?? 0}, worker ${idle.get(wPid!) ?? 0})`,
      (idle.get(sPid!) ?? 0) === 0 && (idle.get(wPid!) ?? 0) === 0,
    );
    check(
      `each process's peak sessions ≤ its budget ${BUDGET} (${Math.max(...peak.values())})`,
      Math.max(...peak.values()) <= BUDGET,
    );
    check(`/metrics under 200 ms (median ${median(metrics).toFixed(0)} ms)`, median(metrics) < 200);
    check(`pgmaint status under 1 s (median ${median(cli).toFixed(0)} ms)`, median(cli) < 1000);
    check(`/healthz within 10 s of start (median ${(median(startup) / 1000).toFixed(1)} s)`, median(startup) < 10_000);
  }
  await worker.stop();
  await server!.stop();
}

/** Runs of the queue that finished, well or not. */
async function finished(queue: Queue): Promise<number> {
  const c = await queue.getJobCounts('completed', 'failed');
  return c.completed! + c.failed!;
}

printTable(
  'What one deployment holds (one server, one worker, one Redis, one PostgreSQL 15 cluster)',
  ['targets', 'measure', `median (min–max) over ${ROUNDS}`, 'per target'],
  rows,
);
printTable(
  'Sessions on the cluster (server / worker)',
  ['targets', 'idle held', 'peak', 'budget per process and cluster'],
  sessionRows,
);
console.log(`\n${verdicts.join('\n')}`);
console.log(`load average after: ${loadAverage()}`);
await admin.end();
await redis.stop();
await pgi.stop();
if (!values.keep) fs.rmSync(dir, { recursive: true, force: true });
