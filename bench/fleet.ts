// What one deployment (one server, one worker, one Redis) holds as its fleet grows:
// 10, 100 and 1,000 target databases in one PostgreSQL 15 cluster, each with two
// partitioned tables and the default schedules. Per fleet size it measures, from outside
// the processes: the server's start-up to /healthz, the schedulers, the sessions each
// process holds idle and at its peak (pg_stat_activity, each session mapped to its
// process through `ss`), /api/status, /metrics (time and size) and `pgmaint status
// --json` through the API, /readyz (against its 3 s deadline), a fleet-wide
// create-partitions run (enqueued on every target), the processes' RSS and Redis's memory,
// and then a scheduled round of each of create-partitions and vacuum-analyze on every target
// for one minute, once without and once with `spread`. Each timed read runs `rounds` times;
// a row shows the median and min–max, and the figure per target.
//   npm run bench:fleet [-- --targets 10,100,1000 --rounds 3 --budget 10 --spread 60s]
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { freePort, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { fmt, loadAverage, median, printTable, type Sample } from './method.ts';

const { values } = parseArgs({
  options: {
    targets: { type: 'string', default: '10,100,1000' },
    rounds: { type: 'string', default: '3' },
    budget: { type: 'string', default: '10' },
    keep: { type: 'boolean', default: false },
    /** The window the scheduled round's runs are spread over (shorter than a minute's cron can take: < 24 h). */
    spread: { type: 'string', default: '60s' },
    /** --no-scheduled: leave out the scheduled rounds (a quicker run of the other figures). */
    scheduled: { type: 'boolean', default: true },
  },
  allowNegative: true,
});
const SIZES = values.targets.split(',').map(Number);
const ROUNDS = Math.max(3, Number(values.rounds));
const BUDGET = Number(values.budget);
const SPREAD = values.spread;
const SCHEDULED_JOBS = ['create-partitions', 'vacuum-analyze'];
/** What /readyz must answer within: its own deadline (src/http/readiness.ts). */
const READY_DEADLINE_MS = 3000;
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
const redisClient = new Redis(redis.url);

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

/** A scheduled round: one job on every target once a day at `cron`, spread or not. */
interface Round {
  job: string;
  cron: string;
  spread?: string;
}

/** The fleet's config: every target with the default schedules, or (`round`) with none but the round's job. */
function writeConfig(n: number, round?: Round): string {
  const targets: Record<string, object> = {};
  const partitions: object[] = [];
  const schedules: object[] = [];
  for (let i = 1; i <= n; i++) {
    const name = dbName(i);
    targets[name] = { url: dbUrl(name), schedules: round ? 'none' : 'default' };
    if (round)
      schedules.push({ id: `${round.job}-${name}`, job: round.job, cron: round.cron, tz: 'UTC', target: name });
    partitions.push(
      { table: 'sales.sale_order', column: 'date_order', interval: 'month', retention: '24 months', target: name },
      { table: 'iot.sensor_reading', column: 'read_at', interval: 'day', retention: '90 days', target: name },
    );
  }
  const file = path.join(dir, `fleet-${n}${round ? `-${round.job}-${round.spread ?? 'together'}` : ''}.json`);
  const spread = round?.spread ? { spread: round.spread } : {};
  fs.writeFileSync(
    file,
    JSON.stringify({
      targets,
      partitions,
      ...(round && {
        schedules,
        jobs: { [round.job]: spread },
      }),
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

/** Every server and worker started: none outlives a bench that fails. */
const started = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of started) child.kill('SIGKILL');
});

function startProcess(role: string, env: Record<string, string>): Proc {
  const child = spawn(process.execPath, [BIN, role], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  started.add(child);
  child.once('exit', () => started.delete(child));
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

/**
 * What each process holds for good: its fewest sessions over `ms` (a sampler interval plus the
 * idle timeout, so a reading's or a run's sessions come and go inside it), and its mean.
 */
async function idleWindow(pids: number[], ms: number): Promise<Map<number, { floor: number; mean: number }>> {
  const seen = new Map<number, number[]>(pids.map((p) => [p, []]));
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const counts = await sessionsByPid().catch(() => undefined);
    if (counts) for (const pid of pids) seen.get(pid)!.push(counts.get(pid) ?? 0);
    await new Promise((r) => setTimeout(r, 500));
  }
  return new Map(
    [...seen].map(([pid, xs]) => [pid, { floor: Math.min(...xs), mean: xs.reduce((a, b) => a + b, 0) / xs.length }]),
  );
}

/** A process's resident memory now and at its peak (VmRSS, VmHWM), MiB. */
function rss(pid: number): { now: number; peak: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { now: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

/** Redis's used_memory, MiB. */
async function redisMemory(): Promise<number> {
  const info = await redisClient.info('memory');
  return Number(/^used_memory:(\d+)/m.exec(info)![1]) / 2 ** 20;
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
  await redisClient.flushall(); // each size's Redis memory is its own
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
  const cliDirect: number[] = [];
  const ready: number[] = [];
  const readyStatuses: number[] = [];
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
    // Direct: on the config file, the snapshot the server's sampler keeps in Redis.
    cliDirect.push(await runCli(['status', '--json'], env));
    const rz = await timedFetch(`${api}/readyz`, auth);
    ready.push(rz.ms);
    readyStatuses.push(rz.status);
  }
  const readyMet = readyStatuses.every((c) => c === 200) && Math.max(...ready) < READY_DEADLINE_MS;

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
  const [sPid, wPid] = pids();
  const memory = { server: rss(sPid!), worker: rss(wPid!), redis: await redisMemory() };
  // Idle: what each process holds for good, over a sampler interval plus the idle timeout (and a margin).
  const idleSeen = await idleWindow([sPid!, wPid!], 45_000);
  const idle = new Map([...idleSeen].map(([pid, v]) => [pid, v.floor]));
  const idleMean = (pid: number) => idleSeen.get(pid)!.mean.toFixed(1);
  await worker.stop();
  await server!.stop();
  const mib = (x: number) => `${x.toFixed(0)} MiB`;
  const perT = (x: number) => `${((x * 1024) / n).toFixed(1)} KiB`;
  const laterRows: string[][] = [];
  laterRows.push(
    [
      `${n}`,
      'server RSS after the run (peak)',
      `${mib(memory.server.now)} (${mib(memory.server.peak)})`,
      perT(memory.server.now),
    ],
    [
      `${n}`,
      'worker RSS after the run (peak)',
      `${mib(memory.worker.now)} (${mib(memory.worker.peak)})`,
      perT(memory.worker.now),
    ],
    [`${n}`, 'Redis used_memory after the run', mib(memory.redis), perT(memory.redis)],
  );
  let roundPeak = 0;
  const rounds = values.scheduled
    ? SCHEDULED_JOBS.flatMap((job) => [undefined, SPREAD].map((spread) => ({ job, spread })))
    : [];
  for (const { job, spread } of rounds) {
    const r = await scheduledRound(n, env, job, spread);
    roundPeak = Math.max(roundPeak, ...r.peak);
    const how = spread ? `spread over ${spread}` : 'not spread';
    const w = { median: median(r.waits) / 1000, max: Math.max(...r.waits) / 1000 };
    laterRows.push(
      [
        `${n}`,
        `scheduled ${job}, ${how}: minute to last end (${r.failed} failed)`,
        `${(r.done / 1000).toFixed(1)} s`,
        `${(r.done / n).toFixed(0)} ms`,
      ],
      [
        `${n}`,
        `  ↳ wait from scheduled time to start, median (max)`,
        `${w.median.toFixed(1)} s (${w.max.toFixed(1)} s)`,
        '–',
      ],
      [
        `${n}`,
        `  ↳ runs waiting at once (peak); sessions server / worker (peak)`,
        `${r.peakWaiting}; ${r.peak[0]} / ${r.peak[1]}`,
        '–',
      ],
    );
  }

  const st = sample('status', status);
  const me = sample('metrics', metrics);
  const cl = sample('cli', cli);
  const cd = sample('cli direct', cliDirect);
  const su = sample('startup', startup);
  const rz = sample('readyz', ready);
  const readyCodes = [...new Set(readyStatuses)].join(', ');
  rows.push(
    [`${n}`, 'start-up to /healthz', fmt(su, 's'), perTarget(su, n)],
    [`${n}`, 'schedulers', `${schedules.length}`, `${(schedules.length / n).toFixed(1)}`],
    [`${n}`, '/api/status', fmt(st, 'ms'), perTarget(st, n)],
    [`${n}`, `/metrics (${Math.round(metricsBytes / 1024)} kB)`, fmt(me, 'ms'), perTarget(me, n)],
    [`${n}`, 'pgmaint status --json (remote)', fmt(cl, 'ms'), perTarget(cl, n)],
    [`${n}`, 'pgmaint status --json (direct)', fmt(cd, 'ms'), perTarget(cd, n)],
    [
      `${n}`,
      `/readyz (${readyCodes}): 200 under its ${READY_DEADLINE_MS / 1000} s deadline ${readyMet ? 'met' : 'NOT met'}`,
      fmt(rz, 'ms'),
      perTarget(rz, n),
    ],
    [
      `${n}`,
      `create-partitions on every target (${failed} failed)`,
      `${(fleetRun / 1000).toFixed(1)} s`,
      `${(fleetRun / n).toFixed(0)} ms`,
    ],
    ...laterRows,
  );
  sessionRows.push([
    `${n}`,
    `${idle.get(sPid!) ?? 0} / ${idle.get(wPid!) ?? 0} (mean ${idleMean(sPid!)} / ${idleMean(wPid!)})`,
    `${peak.get(sPid!) ?? 0} / ${peak.get(wPid!) ?? 0}; scheduled rounds ${roundPeak}`,
    `${BUDGET}`,
  ]);
  if (n >= 1000) {
    const check = (what: string, ok: boolean) => verdicts.push(`${ok ? 'met' : 'NOT met'}: ${what}`);
    check(
      `sessions held for good at ${n} targets are 0 (server ${idle.get(sPid!) ?? 0}, worker ${idle.get(wPid!) ?? 0})`,
      (idle.get(sPid!) ?? 0) === 0 && (idle.get(wPid!) ?? 0) === 0,
    );
    check(
      `each process's peak sessions ≤ its budget ${BUDGET} (${Math.max(...peak.values(), roundPeak)})`,
      Math.max(...peak.values(), roundPeak) <= BUDGET,
    );
    check(`/metrics under 200 ms (median ${median(metrics).toFixed(0)} ms)`, median(metrics) < 200);
    const slowest = Math.max(...ready).toFixed(0);
    check(`/readyz answers 200 under its 3 s deadline (${readyCodes}; at most ${slowest} ms)`, readyMet);
    const [remote, direct] = [median(cli), median(cliDirect)];
    check(
      `pgmaint status under 1 s (median remote ${remote.toFixed(0)} ms, direct ${direct.toFixed(0)} ms)`,
      Math.max(remote, direct) < 1000,
    );
    // The first start writes every scheduler (a cold Redis); the later ones find them unchanged.
    const [cold, slowestStart] = [startup[0]! / 1000, Math.max(...startup) / 1000];
    check(
      `/healthz within 10 s of start (cold ${cold.toFixed(1)} s, slowest ${slowestStart.toFixed(1)} s)`,
      slowestStart < 10,
    );
  }
}

/**
 * One job (create-partitions or vacuum-analyze) scheduled on every target at the first whole
 * minute at least 40 s away (the processes start and sync before it), spread or not; timed
 * from that minute to the last run's end. A run's wait is from its scheduled time (the
 * cron's, plus its offset when spread) to its start.
 */
async function scheduledRound(n: number, env: Record<string, string>, job: string, spread?: string) {
  const fire = Math.ceil((Date.now() + 40_000) / 60_000) * 60_000;
  const at = new Date(fire);
  const cron = `${at.getUTCMinutes()} ${at.getUTCHours()} * * *`;
  const roundEnv = { ...env, PGMAINT_CONFIG: writeConfig(n, { job, cron, spread }) };
  const server = startProcess('server', roundEnv);
  await until('/healthz', async () => (await fetch(`http://127.0.0.1:${env.PORT}/healthz`)).ok, 120_000);
  const worker = startProcess('worker', roundEnv);
  await until('worker started', async () => /worker started/.test(worker.out()), 120_000);
  const queues = [new Queue(job, { connection: { url: redis.url }, prefix: `{fleet${n}}` })];
  const total = async () => (await Promise.all(queues.map(finished))).reduce((a, b) => a + b, 0);
  const before = await total();
  const peaks = peakWatcher(() => [server.child.pid!, worker.child.pid!]);
  let peakWaiting = 0;
  await until(
    `the scheduled ${job} round (${spread ?? 'not spread'})`,
    async () => {
      const waiting = await Promise.all(queues.map((q) => q.getJobCountByTypes('waiting', 'prioritized')));
      peakWaiting = Math.max(
        peakWaiting,
        waiting.reduce((a, b) => a + b, 0),
      );
      await new Promise((r) => setTimeout(r, 450));
      return (await total()) >= before + n;
    },
    30 * 60_000 + (fire - Date.now()),
  );
  const done = Date.now() - fire;
  const peak = await peaks.stop();
  const waits: number[] = [];
  let failed = 0;
  for (const q of queues) {
    for (const job of await q.getJobs(['completed', 'failed'])) {
      const scheduled = /^repeat:.*:(\d+)$/.exec(job.id ?? '');
      if (!scheduled || Number(scheduled[1]) < fire || !job.processedOn) continue;
      waits.push(job.processedOn - Number(scheduled[1]));
      if (job.failedReason) failed++;
    }
    await q.close();
  }
  await worker.stop();
  await server.stop();
  return {
    done,
    waits,
    failed,
    peakWaiting,
    peak: [peak.get(server.child.pid!) ?? 0, peak.get(worker.child.pid!) ?? 0],
  };
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
  ['targets', 'held for good (fewest over 45 s; mean)', 'peak', 'budget per process and cluster'],
  sessionRows,
);
console.log(`\n${verdicts.join('\n')}`);
console.log(`load average after: ${loadAverage()}`);
await admin.end();
redisClient.disconnect();
await redis.stop();
await pgi.stop();
if (!values.keep) fs.rmSync(dir, { recursive: true, force: true });
