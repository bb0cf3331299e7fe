// What maintenance costs the application: pgbench keeps a steady insert load (a fixed
// rate, custom script) on two daily-partitioned parents and an ordinary table, and the
// insert latency (p50, p99, max: from the scheduled start, as the application sees it)
// is read for a quiet window and for the window of each operation:
//   create-partitions (LIKE + ATTACH)          vs  pg_partman run_maintenance()  vs  CREATE TABLE … PARTITION OF
//   drop-expired-partitions (DETACH CONCURRENTLY + DROP)  vs  pg_partman's retention drop
//     and on its own row, the extra work pg_partman does not do: + the verified archive (the default)
//   vacuum-analyze                              vs  VACUUM FULL of the same table
// Under each of our jobs, its statements sent by hand (no planning, journal, history or
// queue): what any tool doing the same work costs here, the floor under the job.
// Each operation prepares its work outside the measured time (future partitions dropped,
// expired ones with rows put back, the table bloated); what that wrote goes to disk
// (CHECKPOINT, sync) before the window opens, so that no window carries another's writes.
// Rounds repeat the operations in order. A window is 5 s from the operation's start (or
// the whole operation, if longer), the same for the quiet baseline: each p99 is over the
// same number of transactions. Each p99 is read twice: the median of the rounds' and
// over all rounds' transactions pooled, a p99 of ROUNDS times as many.
// The cluster commits durably (fsync and synchronous_commit on, the server's defaults);
// --no-fsync turns both off, as the test clusters run. Autovacuum is off, so that its
// runs after each preparation do not land in random windows.
// With --per-run, each operation instead runs on its own, repeatedly, and the bench counts
// the transactions that overlapped a run and took longer than 1.2× the quiet p99: what one
// run costs the application, in transactions, without 5 s of unrelated ones around it.
// With --governor, each governed job runs three ways, interleaved in every round: with the
// load governor off, with it on, and its statements by hand; index-maintenance (REINDEX
// CONCURRENTLY) also against a plain REINDEX, repack-table (pg_repack) against VACUUM FULL.
// Each row shows the operation's own duration and the time inserts were blocked.
// Needs pgbench (PostgreSQL), zstd, pg_repack and postgresql-15-partman.
//   npm run bench:live [-- --rate 200 --rounds 5] [-- --per-run --rounds 10] [-- --no-fsync] [-- --governor]
//     [-- --window-ms 5000] [-- --governor --only vacuum-analyze,repack-table --rounds 1]
//     [-- --governor --governor-keys '{"vacuumCostDelayMs": 20}']
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { DateTime } from 'luxon';
import pg from 'pg';
import { startWorkers } from '../src/cli/roles.ts';
import { loadConfig } from '../src/core/config.ts';
import { gentleOf } from '../src/core/gentle.ts';
import { GOVERNOR_DEFAULTS, governorOverride, mergeGovernor } from '../src/core/governor-policy.ts';
import { postgresUser } from '../src/core/local-postgres.ts';
import { createLogger } from '../src/core/logger.ts';
import { binPath, runPipeline, runProcess } from '../src/core/proc.ts';
import { quoteQualified } from '../src/core/sql.ts';
import { splitQualified } from '../src/backup/partition-archive.ts';
import { steps as vacuumSteps, type Action as VacuumAction } from '../jobs/vacuum-analyze.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createRuntime } from '../src/pgmaint.ts';
import { loadAverage, median, printTable } from './method.ts';
import { jobRunner } from './run-job.ts';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '5' },
    'per-run': { type: 'boolean', default: false },
    'no-fsync': { type: 'boolean', default: false },
    governor: { type: 'boolean', default: false },
    'window-ms': { type: 'string', default: '5000' },
    /** With --governor: only these jobs' rows (comma-separated names), to see one change's effect. */
    only: { type: 'string' },
    /** With --governor: governor keys (JSON) over the runs with it on, e.g. '{"streamMaxRate":"4M"}'. */
    'governor-keys': { type: 'string', default: '{}' },
  },
});
const GOVERNOR = values.governor;
/** The governor as the runs with it on have it: the bench's probe against its quiet baseline, read often. */
const GOVERNOR_ON = {
  checkEveryMs: 250,
  maxProbeRatio: 2,
  minProbeMs: 2,
  maxPauseSeconds: 10,
  ...(JSON.parse(values['governor-keys']) as object),
};
const GOVERNOR_OFF = { enabled: false };
/** An insert slower than this was blocked (a lock, a stall): the time any insert waited past it is counted. */
const BLOCKED_AFTER_MS = 50;
// The application's commits are durable, as the server's defaults make them; the test
// clusters' fsync=off would time a database that loses its last commits in a crash.
const DURABLE = !values['no-fsync'];
const COMMITS = DURABLE ? 'durable commits' : 'fsync off';
const PER_RUN = values['per-run'];
const RATE = Number(values.rate);
// Fewer than 3 rounds only for a quick look at one change (--only); a reading is 3 or more.
const ROUNDS = Math.max(values.only ? 1 : 3, Number(values.rounds));
const FUTURE = 10; // partitions each creation makes
const EXPIRED = 5; // partitions each retention drops
const ROWS_PER_DAY = 20_000;

if (!fs.existsSync('/usr/share/postgresql/15/extension/pg_partman.control')) {
  console.error('pg_partman is not installed: apt-get install -y postgresql-15-partman');
  process.exit(2);
}
console.log(`load average before: ${loadAverage()}`);
if (GOVERNOR)
  console.log(
    `governor on: ${JSON.stringify(GOVERNOR_ON)}; inside a unit: ` +
      JSON.stringify(gentleOf(mergeGovernor(GOVERNOR_DEFAULTS, governorOverride.parse(GOVERNOR_ON)))),
  );
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-live-'));
fs.chmodSync(dir, 0o777);
const [server, redis] = await Promise.all([
  // Autovacuum off: its runs, set off by each round's preparation, would land in random
  // windows; each window measures the one operation it is named after.
  startPostgres({
    dir: path.join(dir, 'pg'),
    settings: {
      max_locks_per_transaction: 256,
      autovacuum: 'off',
      ...(DURABLE ? { fsync: 'on', synchronous_commit: 'on' } : {}),
    },
  }),
  startRedis({ dir: path.join(dir, 'redis') }),
]);
await createDatabase(server, 'app');
const db = new pg.Client({ connectionString: server.url('app') });
await db.connect();
const day = DateTime.utc().startOf('day');
const iso = (d: DateTime) => d.toISO();

// Two parents inserted into by every transaction: ours and pg_partman's, daily, 30 days kept.
await db.query(`
  create schema app; create schema partman; create extension pg_partman schema partman; create extension pg_repack;
  create table app.reading_ours (ts timestamptz not null, sensor int, v float8) partition by range (ts);
  create index on app.reading_ours (sensor, ts);
  create table app.reading_partman (ts timestamptz not null, sensor int, v float8) partition by range (ts);
  create index on app.reading_partman (sensor, ts);
  create table app.meter (id int primary key, v float8, note text);
  insert into app.meter select g, 0, repeat('x', 80) from generate_series(1, 200000) g;`);
await db.query(
  `select partman.create_parent('app.reading_partman', 'ts', 'native', 'daily', p_premake := ${FUTURE},
     p_start_partition := $1, p_jobmon := false)`,
  [iso(day.minus({ days: 40 }))],
);
await db.query(
  `update partman.part_config set retention = '30 days', retention_keep_table = false, infinite_time_partitions = true
    where parent_table = 'app.reading_partman'`,
);

const configFile = path.join(dir, 'pgmaint.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({
    partitions: [{ table: 'app.reading_ours', column: 'ts', interval: 'day', premake: FUTURE, retention: '30 days' }],
  }),
);
const config = loadConfig({
  DATABASE_URL: server.url('app'),
  REDIS_URL: redis.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: configFile,
});
const policy = config.partitions[0]!;
const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
await rt.history.migrate();
startWorkers(rt, [
  'create-partitions',
  'drop-expired-partitions',
  'vacuum-analyze',
  'index-maintenance',
  'repack-table',
]);
const job = jobRunner(rt);

/** Partitions of a parent whose range starts before/after a time. */
async function partitionsOf(parent: string, where: 'future' | 'expired'): Promise<string[]> {
  const { rows } = await db.query<{ name: string; bound: string }>(
    `select n.nspname || '.' || c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bound
       from pg_inherits i join pg_class c on c.oid = i.inhrelid join pg_namespace n on n.oid = c.relnamespace
      where i.inhparent = $1::regclass`,
    [parent],
  );
  return rows
    .filter((r) => r.bound !== 'DEFAULT')
    .filter((r) => {
      const from = DateTime.fromSQL(/FROM \('([^']+)'\)/.exec(r.bound)![1]!, { zone: 'UTC' });
      return where === 'future' ? from > day.plus({ days: 1 }) : from < day.minus({ days: 30 });
    })
    .map((r) => r.name);
}

/** Puts back the days 31 … 30+EXPIRED ago with rows, on both parents (as plain SQL, outside the windows). */
async function prepareExpired(): Promise<void> {
  for (let i = 31; i <= 30 + EXPIRED; i++) {
    const from = day.minus({ days: i });
    // pg_partman finds its children by its own naming (_pYYYY_MM_DD); ours are read from the catalog.
    for (const name of [
      `app.reading_ours_p${from.toFormat('yyyyMMdd')}`,
      `app.reading_partman_p${from.toFormat('yyyy_MM_dd')}`,
    ]) {
      const parent = name.startsWith('app.reading_ours') ? 'app.reading_ours' : 'app.reading_partman';
      const exists = (await db.query(`select to_regclass($1) as r`, [name])).rows[0].r;
      if (!exists)
        await db.query(
          `create table ${name} partition of ${parent} for values from ('${iso(from)}') to ` +
            `('${iso(from.plus({ days: 1 }))}')`,
        );
      await db.query(
        `insert into ${name} select $1::timestamptz + g * interval '4 seconds', g % 500, random() from ` +
          `generate_series(0, ${ROWS_PER_DAY - 1}) g where not exists (select from ${name})`,
        [iso(from)],
      );
    }
  }
}

/** Drops the future partitions of ours (both creators then make the same ones), outside the windows. */
async function prepareFuture(parent: string): Promise<void> {
  for (const name of await partitionsOf(parent, 'future')) await db.query(`drop table ${name}`);
}

// Both parents start with today's runway (and pg_partman's first retention pass done).
await job('create-partitions', {});
await db.query(`select partman.run_maintenance('app.reading_partman', p_analyze := false, p_jobmon := false)`);

// pgbench: every transaction inserts into both parents and the ordinary table.
const script = path.join(dir, 'insert.sql');
fs.writeFileSync(
  script,
  `\\set s random(1, 500)
\\set id random(1, 200000)
insert into app.reading_ours values (now(), :s, random());
insert into app.reading_partman values (now(), :s, random());
update app.meter set v = v + 1 where id = :id;
`,
);
const logPrefix = path.join(dir, 'pgb');
const owner = postgresUser();
const pgbench = spawn(
  binPath('pgbench'),
  [
    '-n',
    '-f',
    script,
    '-R',
    String(RATE),
    '-c',
    '4',
    '-j',
    '2',
    '-T',
    '36000',
    '-l',
    `--log-prefix=${logPrefix}`,
    '-h',
    '127.0.0.1',
    '-p',
    String(server.port),
    '-U',
    'postgres',
    'app',
  ],
  { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], ...(owner ? { uid: owner.uid, gid: owner.gid } : {}) },
);
let pgbenchErr = '';
pgbench.stderr!.on('data', (d) => (pgbenchErr += d.toString()));

/** A measured stretch of time: a window, or one run of an operation (--per-run). */
interface Span {
  /** Index in operations. */
  op: number;
  from: number;
  to: number;
  /** When the operation itself ended. */
  ran: number;
}
const spans: Span[] = [];
/** A window lasts at least WINDOW_MS from the operation's start (the same length for every
 * side, so a p99 is over the same number of transactions), or the operation's whole run. */
const WINDOW_MS = Math.max(1000, Number(values['window-ms']));
/** Writes to disk now what came before (the operation, a preparation), so that neither the
 * checkpointer nor the kernel's writeback of dirty pages, 30 s later, lands in another
 * window; then the load settles before the next one. */
async function settle(): Promise<void> {
  await db.query('checkpoint');
  execFileSync('sync');
  await sleep(1500);
}

const createPartitionOf = async () => {
  for (let i = 2; i <= FUTURE; i++) {
    const from = day.plus({ days: i });
    await db.query(
      `create table app.reading_ours_plain${i} partition of app.reading_ours for values from ('${iso(from)}') to ` +
        `('${iso(from.plus({ days: 1 }))}')`,
    );
  }
};
const partmanMaintenance = () =>
  db.query(`select partman.run_maintenance('app.reading_partman', p_analyze := false, p_jobmon := false)`);
// The same policy with its archive off: the work pg_partman's retention does.
const dropWithoutArchive = async () => {
  policy.archive = false;
  try {
    await job('drop-expired-partitions', {});
  } finally {
    policy.archive = true;
  }
};
const bloat = () => db.query(`update app.meter set v = v + 1 where id % 2 = 0`); // half the table dead

// Each job's statements sent by hand, with none of its planning, journal, checks, history or
// queue: what any tool doing the same work on this server costs, the floor under the job.
const sql = async (...statements: string[]) => {
  for (const q of statements) await db.query(q);
};
const ourName = (from: DateTime) => `app.reading_ours_p${from.toFormat('yyyyMMdd')}`;
const futureDays = () => Array.from({ length: FUTURE - 1 }, (_, k) => day.plus({ days: k + 2 }));
const expiredOurs = () => Array.from({ length: EXPIRED }, (_, k) => ourName(day.minus({ days: 31 + k })));
const createByHand = () =>
  sql(
    'begin',
    ...futureDays().flatMap((from) => [
      `create table ${ourName(from)} (like app.reading_ours including all)`,
      `alter table app.reading_ours attach partition ${ourName(from)} for values from ('${iso(from)}') to ` +
        `('${iso(from.plus({ days: 1 }))}')`,
    ]),
    'commit',
  );
const detachByHand = () =>
  sql(...expiredOurs().map((name) => `alter table app.reading_ours detach partition ${name} concurrently`));
const dropByHand = () => sql(...expiredOurs().map((name) => `drop table ${name}`));
const archiveByHand = async () => {
  await detachByHand();
  const file = path.join(dir, 'by-hand.dump.zst');
  await runPipeline([
    {
      cmd: binPath('pg_dump'),
      args: ['--format=custom', '--compress=0', ...expiredOurs().map((t) => `--table=${t}`), server.url('app')],
    },
    { cmd: 'zstd', args: ['-q', '-f', '-3', '-o', file] },
  ]);
  await dropByHand();
  fs.rmSync(file);
};
// What the job's last run did (the tables it chose, the action on each), then the same by
// hand: each VACUUM alone, the ANALYZEs between two VACUUMs in one transaction, throttled
// as the job is.
let planned: { table: string; action: VacuumAction }[] = [];
const vacuumAnalyze = async (governor?: object) => {
  const { result } = await job('vacuum-analyze', { schemas: ['app'], ...(governor ? { governor } : {}) });
  planned = result.tables.filter((t: { skipped?: string }) => !t.skipped);
  return result;
};
const vacuumByHand = async () => {
  const statements = ['set vacuum_cost_delay = 2'];
  let open = false;
  for (const { table, action } of planned) {
    const { vacuum, analyze } = vacuumSteps(action, quoteQualified(...splitQualified(table)));
    if (vacuum) {
      if (open) statements.push('commit');
      open = false;
      statements.push(vacuum);
    }
    if (analyze) {
      if (!open) statements.push('begin');
      open = true;
      statements.push(analyze);
    }
  }
  if (open) statements.push('commit');
  await sql(...statements, 'reset vacuum_cost_delay');
  console.error(`  by hand, as the job's run: ${planned.map((c) => `${c.action} ${c.table}`).join(', ')}`);
};
/** Outside the measured time: the job's own future partitions back (after plain PARTITION OF). */
const jobPartitionsBack = async () => {
  await prepareFuture('app.reading_ours');
  await job('create-partitions', {});
};

const BY_HAND = '  the same statements by hand';
/** What each window or run measures, in order; each prepares its own work outside the measured time. */
const operations: { name: string; ours?: true; prepare: () => Promise<unknown>; run: () => Promise<unknown> }[] = [
  {
    name: 'quiet (nothing runs)',
    prepare: async () => undefined,
    run: () => (PER_RUN ? sleep(600) : Promise.resolve()),
  },
  {
    name: 'create-partitions (LIKE + ATTACH)',
    ours: true,
    prepare: () => prepareFuture('app.reading_ours'),
    run: () => job('create-partitions', {}),
  },
  { name: `${BY_HAND} (one transaction)`, prepare: () => prepareFuture('app.reading_ours'), run: createByHand },
  {
    name: 'CREATE TABLE … PARTITION OF, same partitions',
    prepare: () => prepareFuture('app.reading_ours'),
    run: createPartitionOf,
  },
  {
    name: 'pg_partman run_maintenance() (creates and drops)',
    prepare: async () => {
      await jobPartitionsBack();
      await prepareExpired();
      await prepareFuture('app.reading_partman');
    },
    run: partmanMaintenance,
  },
  {
    name: 'drop-expired-partitions, archive off (DETACH CONCURRENTLY + DROP)',
    ours: true,
    prepare: prepareExpired,
    run: dropWithoutArchive,
  },
  {
    name: BY_HAND,
    prepare: prepareExpired,
    run: async () => {
      await detachByHand();
      await dropByHand();
    },
  },
  {
    name: 'drop-expired-partitions + verified archive (default)',
    ours: true,
    prepare: prepareExpired,
    run: () => job('drop-expired-partitions', {}),
  },
  { name: `${BY_HAND} (pg_dump into zstd, no read-back)`, prepare: prepareExpired, run: archiveByHand },
  {
    name: 'vacuum-analyze',
    ours: true,
    prepare: bloat,
    run: () => vacuumAnalyze(),
  },
  { name: BY_HAND, prepare: bloat, run: vacuumByHand },
  { name: 'VACUUM FULL of the same table', prepare: bloat, run: () => db.query('vacuum full app.meter') },
];

// --governor: each governed job with the governor off, on, and by hand; index and table rebuilds against the
// plain statements that lock the table.
const off =
  (name: string, payload: object = {}) =>
  () =>
    job(name, { ...payload, governor: GOVERNOR_OFF });
/** Runs with the governor on; a run it held past maxPauseSeconds stopped deferred, which the summary counts. */
let deferred = 0;
const on =
  (name: string, payload: object = {}) =>
  async () => {
    const { result } = await job(name, { ...payload, governor: GOVERNOR_ON });
    if (JSON.stringify(result).includes('deferred')) {
      deferred++;
      console.error(`  ${name} deferred by load: ${JSON.stringify(result).slice(0, 300)}`);
    }
  };
const reindexPayload = { indexes: ['app.meter_pkey'] };
const repackPayload = { tables: ['app.meter'] };
const repackByHand = () =>
  runProcess(binPath('pg_repack'), [
    '--table=app.meter',
    '--no-kill-backend',
    '--no-order',
    '--wait-timeout=60',
    '-h',
    '127.0.0.1',
    '-p',
    String(server.port),
    '-U',
    'postgres',
    '-d',
    'app',
  ]);
const governorOperations: typeof operations = [
  operations[0]!,
  {
    name: 'create-partitions, governor off',
    ours: true,
    prepare: () => prepareFuture('app.reading_ours'),
    run: off('create-partitions'),
  },
  { name: '  governor on', prepare: () => prepareFuture('app.reading_ours'), run: on('create-partitions') },
  { name: BY_HAND, prepare: () => prepareFuture('app.reading_ours'), run: createByHand },
  {
    name: 'drop-expired-partitions + archive, governor off',
    ours: true,
    prepare: prepareExpired,
    run: off('drop-expired-partitions'),
  },
  { name: '  governor on', prepare: prepareExpired, run: on('drop-expired-partitions') },
  { name: `${BY_HAND} (pg_dump into zstd)`, prepare: prepareExpired, run: archiveByHand },
  { name: 'vacuum-analyze, governor off', ours: true, prepare: bloat, run: () => vacuumAnalyze(GOVERNOR_OFF) },
  {
    name: '  governor on',
    prepare: bloat,
    run: async () => {
      if (JSON.stringify(await vacuumAnalyze(GOVERNOR_ON)).includes('deferred')) deferred++;
    },
  },
  { name: BY_HAND, prepare: bloat, run: vacuumByHand },
  {
    name: 'index-maintenance (REINDEX CONCURRENTLY), governor off',
    ours: true,
    prepare: async () => undefined,
    run: off('index-maintenance', reindexPayload),
  },
  { name: '  governor on', prepare: async () => undefined, run: on('index-maintenance', reindexPayload) },
  {
    name: `${BY_HAND} (REINDEX INDEX CONCURRENTLY)`,
    prepare: async () => undefined,
    run: () => db.query('reindex index concurrently app.meter_pkey'),
  },
  { name: 'plain REINDEX INDEX', prepare: async () => undefined, run: () => db.query('reindex index app.meter_pkey') },
  {
    name: 'repack-table (pg_repack), governor off',
    ours: true,
    prepare: bloat,
    run: off('repack-table', repackPayload),
  },
  { name: '  governor on', prepare: bloat, run: on('repack-table', repackPayload) },
  { name: `${BY_HAND} (pg_repack)`, prepare: bloat, run: repackByHand },
  { name: 'VACUUM FULL of the same table', prepare: bloat, run: () => db.query('vacuum full app.meter') },
];
if (GOVERNOR) {
  // Each job's rows run from its "governor off" row to the next job's.
  const only = values.only?.split(',');
  let keep = true;
  const chosen = governorOperations.filter((op, i) => {
    if (i === 0 || !only) return true;
    if (op.ours) keep = only.some((name) => op.name.startsWith(name));
    return keep;
  });
  operations.splice(0, operations.length, ...chosen);
}

/** Every round runs the operations in order, each after its own preparation. */
async function rounds(): Promise<void> {
  for (let round = 1; round <= ROUNDS; round++) {
    console.error(`round ${round}`);
    for (const [op, { prepare, run }] of operations.entries()) {
      await prepare();
      await settle();
      const from = Date.now();
      await run();
      const ran = Date.now();
      if (PER_RUN) {
        spans.push({ op, from, to: ran, ran });
        await sleep(700); // the transactions that overlapped the run finish
      } else {
        const to = Math.max(ran, from + WINDOW_MS);
        await sleep(to - ran);
        spans.push({ op, from, to, ran });
      }
    }
  }
}

await sleep(3000);
await rounds();
// pgbench's log is buffered: quiet seconds after the last window push its lines out first.
await sleep(5000);
pgbench.kill('SIGINT');
await new Promise((r) => pgbench.on('exit', r));
if (!fs.readdirSync(dir).some((f) => f.startsWith('pgb'))) throw new Error(`pgbench wrote no log: ${pgbenchErr}`);

// Per-transaction log lines: client tx latency_us script epoch_s epoch_us [lag_us]. Under
// --rate, latency_us is already counted from the scheduled start: it includes lag_us.
const samples: { at: number; ms: number }[] = [];
for (const f of fs.readdirSync(dir).filter((x) => x.startsWith('pgb'))) {
  for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
    const p = line.trim().split(/\s+/).map(Number);
    if (p.length < 6 || p.some(Number.isNaN)) continue;
    const at = p[4]! * 1000 + p[5]! / 1000; // completion time
    samples.push({ at, ms: p[2]! / 1000 });
  }
}
const pct = (xs: number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

const spread = (xs: number[], d: number) =>
  `${median(xs).toFixed(d)} (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;
/** Our jobs' rows, each with the row of its statements by hand (the next one). */
const oursWithFloor = operations.flatMap((op, i) => (op.ours ? [{ ours: i, byHand: i + 1 }] : []));

/**
 * How long, in ms, at least one of these inserts had been waiting longer than BLOCKED_AFTER_MS: the union of
 * [start + BLOCKED_AFTER_MS, end] over the slow ones (start: the scheduled start, the end less the latency).
 */
function blockedMs(xs: { at: number; ms: number }[]): number {
  const spansOf = xs
    .filter((s) => s.ms > BLOCKED_AFTER_MS)
    .map((s) => [s.at - s.ms + BLOCKED_AFTER_MS, s.at] as const)
    .sort((a, b) => a[0] - b[0]);
  let total = 0;
  let reach = -Infinity;
  for (const [a, b] of spansOf) {
    const start = Math.max(a, reach);
    if (b > start) total += b - start;
    reach = Math.max(reach, b);
  }
  return total;
}

function windowReport(): void {
  const stats = operations.map((_, op) => {
    const perRound = spans
      .filter((w) => w.op === op)
      .map((w) => {
        const mine = samples.filter((s) => s.at >= w.from && s.at <= w.to + 50);
        const ms = mine.map((s) => s.ms);
        return {
          ms,
          p50: pct(ms, 0.5),
          p99: pct(ms, 0.99),
          max: Math.max(...ms),
          secs: (w.to - w.from) / 1000,
          ran: (w.ran - w.from) / 1000,
          blocked: blockedMs(mine),
        };
      });
    // Every round's transactions together: a p99 over ROUNDS times as many, steadier than each round's.
    const pooledP99 = pct(
      perRound.flatMap((r) => r.ms),
      0.99,
    );
    return { perRound, p99: median(perRound.map((r) => r.p99)), pooledP99 };
  });
  const quiet = stats[0]!;
  // A steadier reading than a p99 of ~1,000: how many of a window's transactions took longer
  // than the quiet p99 (about 10 in a quiet window, by its definition).
  const overQuietP99 = (r: { ms: number[] }) => r.ms.filter((x) => x > quiet.p99).length;
  printTable(
    `insert latency under maintenance at ${RATE} tx/s, ${COMMITS}, ${ROUNDS} rounds; median (min–max) over rounds, ms`,
    [
      'window',
      'p50',
      'p99',
      'max',
      'p99 / quiet p99',
      'tx over quiet p99',
      'p99 of all rounds',
      '… / quiet',
      'window (s)',
      'run (s)',
      `blocked > ${BLOCKED_AFTER_MS} ms (ms)`,
      'tx',
    ],
    stats.map(({ perRound, p99, pooledP99 }, op) => [
      operations[op]!.name,
      spread(
        perRound.map((r) => r.p50),
        2,
      ),
      spread(
        perRound.map((r) => r.p99),
        2,
      ),
      spread(
        perRound.map((r) => r.max),
        1,
      ),
      `${(p99 / quiet.p99).toFixed(2)}×`,
      spread(perRound.map(overQuietP99), 0),
      pooledP99.toFixed(2),
      `${(pooledP99 / quiet.pooledP99).toFixed(2)}×`,
      spread(
        perRound.map((r) => r.secs),
        1,
      ),
      spread(
        perRound.map((r) => r.ran),
        2,
      ),
      spread(
        perRound.map((r) => r.blocked),
        0,
      ),
      String(median(perRound.map((r) => r.ms.length))),
    ]),
  );
  console.log('target: p99 during our jobs ≤ 1.2× the quiet baseline (median of rounds; all rounds pooled)');
  const ratios = (op: number) =>
    `${(stats[op]!.p99 / quiet.p99).toFixed(2)}×; ${(stats[op]!.pooledP99 / quiet.pooledP99).toFixed(2)}×`;
  if (GOVERNOR) {
    // Each job's rows: governor off (ours), on (next), by hand (after it).
    console.log(
      'with the governor on: p99 ≤ 1.2× quiet (median of rounds; pooled), duration ≤ 4× off; against off: level ' +
        `when on's median p99 lies within off's rounds' range; runs deferred by load: ${deferred}`,
    );
    const ran = (op: number) => median(stats[op]!.perRound.map((r) => r.ran));
    const verdict = (ratio: number) => `${ratio.toFixed(2)}× ${ratio <= 1.2 ? 'met' : 'NOT met'}`;
    for (const { ours: offRow } of oursWithFloor) {
      const onRow = offRow + 1;
      const on = stats[onRow]!;
      const offRounds = stats[offRow]!.perRound.map((r) => r.p99);
      const against = on.p99 < Math.min(...offRounds) ? 'lower' : on.p99 > Math.max(...offRounds) ? 'higher' : 'level';
      const slower = ran(onRow) / ran(offRow);
      console.log(
        `  ${operations[offRow]!.name.replace(/, governor off$/, '')}: governor on p99 median ` +
          `${verdict(on.p99 / quiet.p99)}, pooled ${verdict(on.pooledP99 / quiet.pooledP99)}; ` +
          `against off (${ratios(offRow)}): ${against}; by hand ${ratios(onRow + 1)}; ` +
          `duration ${ran(onRow).toFixed(2)} s against ${ran(offRow).toFixed(2)} s off, ${slower.toFixed(2)}× ` +
          `${slower <= 4 ? 'met' : 'NOT met'} (≤ 4×)`,
      );
    }
    return;
  }
  for (const { ours, byHand } of oursWithFloor) {
    const met = stats[ours]!.p99 / quiet.p99 <= 1.2 && stats[ours]!.pooledP99 / quiet.pooledP99 <= 1.2;
    console.log(
      `  ${operations[ours]!.name}: ${ratios(ours)} — ${met ? 'met' : 'NOT met'}; ` +
        `its statements by hand: ${ratios(byHand)}`,
    );
  }
}

function perRunReport(): void {
  // A transaction overlaps a run when it was running at any moment of it: from its
  // scheduled start (its completion less its latency) to its completion.
  const during = (run: Span) => samples.filter((s) => s.at - s.ms < run.to && s.at > run.from).map((s) => s.ms);
  const quietP99 = pct(spans.filter((r) => r.op === 0).flatMap(during), 0.99);
  const threshold = 1.2 * quietP99;
  printTable(
    `one run of each operation, alone, at ${RATE} tx/s, ${COMMITS}, ${ROUNDS} rounds; ` +
      `quiet (a 600 ms pause) p99 ${quietP99.toFixed(2)} ms; median (min–max) over runs`,
    [
      'operation',
      'run (ms)',
      'tx during a run',
      `tx over 1.2× quiet p99 (${threshold.toFixed(2)} ms), per run`,
      'mean per run',
      'share of the tx during its runs',
    ],
    operations.map(({ name }, op) => {
      const mine = spans.filter((r) => r.op === op).map((r) => ({ r, ms: during(r) }));
      const slow = mine.map(({ ms }) => ms.filter((x) => x > threshold).length);
      const total = mine.reduce((n, { ms }) => n + ms.length, 0);
      const slowTotal = slow.reduce((a, b) => a + b, 0);
      return [
        name,
        spread(
          mine.map(({ r }) => r.to - r.from),
          0,
        ),
        spread(
          mine.map(({ ms }) => ms.length),
          0,
        ),
        spread(slow, 0),
        (slowTotal / mine.length).toFixed(1),
        `${((100 * slowTotal) / total).toFixed(0)} %`,
      ];
    }),
  );
}

if (PER_RUN) perRunReport();
else windowReport();
console.log(`load average after: ${loadAverage()}`);

await job.close();
await rt.close();
await db.end();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
