// create-partitions against pg_partman 4.x on identical schemas, per fleet size:
// N monthly-partitioned parents, premake 4 (the current month and 4 ahead). pg_partman
// 4.x always gives a parent a DEFAULT partition, so our parents have one too (made with
// the schema, untimed): both sides then hold the same 5 partitions and a DEFAULT.
//   first run:    pgmaint create-partitions  vs  partman.create_parent() for each parent
//   steady state: pgmaint create-partitions  vs  partman.run_maintenance()   (nothing to do)
// The cluster allows 512 locks a transaction (run_maintenance at 1,000 parents needs
// more than the default 64). Both are timed from outside: ours from the enqueue to the result through the queue and
// a worker, pg_partman from the client's call to its answer. Rounds are interleaved
// (pg_partman, pgmaint, pg_partman, …); a first-run round starts from fresh parents.
// Steady state runs at least 5 rounds, after one uncounted warm-up run of each side.
// Needs Debian's postgresql-15-partman:  apt-get install -y postgresql-15-partman
//   npm run bench:partitions [-- --parents 50,200,1000 --rounds 3]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DateTime } from 'luxon';
import pg from 'pg';
import { startWorkers } from '../src/cli/roles.ts';
import { loadConfig } from '../src/core/config.ts';
import { createLogger } from '../src/core/logger.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createRuntime } from '../src/pgmaint.ts';
import { fmt, interleave, loadAverage, median, printTable, row, type Sample } from './method.ts';
import { jobRunner } from './run-job.ts';

const { values } = parseArgs({
  options: { parents: { type: 'string', default: '50,200,1000' }, rounds: { type: 'string', default: '3' } },
});
const FLEETS = values.parents!.split(',').map(Number);
const ROUNDS = Math.max(3, Number(values.rounds));
/** Steady state is cheap: more rounds, after one warm-up run of each side. */
const STEADY_ROUNDS = Math.max(5, ROUNDS);

if (!fs.existsSync('/usr/share/postgresql/15/extension/pg_partman.control')) {
  console.error('pg_partman is not installed: apt-get install -y postgresql-15-partman');
  process.exit(2);
}

console.log(`load average before: ${loadAverage()}`);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-part-'));
fs.chmodSync(dir, 0o755);
const [server, redis] = await Promise.all([
  // pg_partman's run_maintenance() locks every child of every parent in one transaction.
  startPostgres({ dir: path.join(dir, 'pg'), settings: { max_locks_per_transaction: 512 } }),
  startRedis({ dir: path.join(dir, 'redis') }),
]);

async function withClient<T>(db: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: server.url(db) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

const countPartitions = (db: string) =>
  withClient(db, async (c) =>
    Number(
      (
        await c.query(
          `select count(*) as n from pg_inherits i join pg_class p on p.oid = i.inhparent join pg_class c on c.oid ` +
            `= i.inhrelid join pg_namespace n on n.oid = p.relnamespace where n.nspname = 'bench'`,
        )
      ).rows[0].n,
    ),
  );

const rows: string[][] = [];
const verdicts: string[] = [];
for (const N of FLEETS) {
  const [ours, partman] = [`ours_${N}`, `partman_${N}`];
  await createDatabase(server, ours);
  await createDatabase(server, partman);
  const tables = Array.from({ length: N }, (_, i) => `bench.t${String(i + 1).padStart(4, '0')}`);
  const chunks = Array.from({ length: Math.ceil(N / 100) }, (_, i) => tables.slice(i * 100, i * 100 + 100));
  /** Fresh parents, 100 to a transaction (one transaction for them all runs out of lock slots). */
  const resetSchema = async (c: pg.Client, withDefaults: boolean) => {
    const exists = (await c.query(`select 1 from pg_namespace where nspname = 'bench'`)).rowCount;
    if (exists) for (const chunk of chunks) await c.query(`drop table if exists ${chunk.join(', ')} cascade`);
    await c.query('drop schema if exists bench cascade; create schema bench');
    for (const chunk of chunks)
      await c.query(
        chunk
          .map(
            (t) =>
              `create table ${t} (id bigint not null, ts timestamptz not null, v int) partition by range (ts); ` +
              `create index on ${t} (id);` +
              (withDefaults ? ` create table ${t}_default partition of ${t} default;` : ''),
          )
          .join('\n'),
      );
  };
  await withClient(partman, (c) => c.query('create schema partman; create extension pg_partman schema partman'));

  const configFile = path.join(dir, `pgmaint-${N}.json`);
  fs.writeFileSync(
    configFile,
    JSON.stringify({
      partitions: tables.map((table) => ({ table, column: 'ts', interval: 'month', premake: 4 })),
      redis: { prefix: `{bench-${N}}` },
    }),
  );
  const config = loadConfig({
    DATABASE_URL: server.url(ours),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
    PGMAINT_CONFIG: configFile,
  });
  const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['create-partitions']);
  const runJob = jobRunner(rt);
  const createdBy = async () => {
    const { ms, result } = await runJob('create-partitions', {});
    return { ms, created: (result.policies as { created: unknown[] }[]).reduce((n, p) => n + p.created.length, 0) };
  };

  console.error(`${N} parents: first run`);
  const monthStart = DateTime.utc().startOf('month').toISO();
  const first = await interleave(
    [
      {
        name: 'pg_partman create_parent',
        run: async () => {
          await withClient(partman, async (c) => {
            await resetSchema(c, false);
            await c.query('truncate partman.part_config cascade');
          });
          return withClient(partman, async (c) => {
            const t0 = performance.now();
            for (const t of tables)
              await c.query(
                `select partman.create_parent($1, 'ts', 'native', 'monthly', p_premake := 4, ` +
                  `p_start_partition := $2, p_jobmon := false)`,
                [t, monthStart],
              );
            return performance.now() - t0;
          });
        },
      },
      {
        name: 'pgmaint create-partitions',
        run: async () => {
          await withClient(ours, (c) => resetSchema(c, true));
          const { ms, created } = await createdBy();
          if (created !== 5 * N) throw new Error(`first run created ${created} partitions, not ${5 * N}`);
          return ms;
        },
      },
    ],
    ROUNDS,
  );
  console.error(`${N} parents: steady state`);
  const steady = await interleave(
    [
      {
        name: 'pg_partman run_maintenance',
        run: () =>
          withClient(partman, async (c) => {
            const t0 = performance.now();
            await c.query(`select partman.run_maintenance(p_analyze := false, p_jobmon := false)`);
            return performance.now() - t0;
          }),
      },
      {
        name: 'pgmaint create-partitions',
        run: async () => {
          const { ms, created } = await createdBy();
          if (created !== 0) throw new Error(`steady state created ${created} partitions`);
          return ms;
        },
      },
    ],
    STEADY_ROUNDS,
    { warmup: 1 },
  );
  const [partsTheirs, partsOurs] = [await countPartitions(partman), await countPartitions(ours)];
  const perParent = (s: Sample): Sample => ({ name: s.name, ms: s.ms.map((ms) => ms / N) });
  rows.push(
    row(`${N} parents: first run (ms)`, first[1]!, first[0]!, '', 'ms'),
    row(`${N} parents: steady state (ms)`, steady[1]!, steady[0]!, N === 1000 ? '≤ 0.2×, < 200 ms' : '', 'ms'),
    ['  steady state per parent', fmt(perParent(steady[1]!), 'ms'), fmt(perParent(steady[0]!), 'ms'), '', ''],
    [`  partitions after`, String(partsOurs), String(partsTheirs), '', ''],
  );
  if (N === 1000) {
    const [o, t] = [median(steady[1]!.ms), median(steady[0]!.ms)];
    verdicts.push(
      `steady state at 1000 parents under 200 ms — ${o < 200 ? 'met' : 'NOT met'} (${o.toFixed(0)} ms); ` +
        `at least 5× faster than pg_partman — ${t / o >= 5 ? 'met' : 'NOT met'} (${(t / o).toFixed(1)}×)`,
    );
  }
  await runJob.close();
  await rt.close();
}

printTable(
  `create-partitions against pg_partman, interleaved: first run ${ROUNDS} rounds, steady state ${STEADY_ROUNDS} ` +
    `after a warm-up; median (min–max)`,
  ['', 'pgmaint', 'pg_partman 4.x', 'ratio', 'target'],
  rows,
);
for (const v of verdicts) console.log(`target: ${v}`);
console.log(`load average after: ${loadAverage()}`);

await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
