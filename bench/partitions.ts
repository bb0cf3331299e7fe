// create-partitions against pg_partman 4.x on identical schemas, in one run:
// 200 monthly-partitioned parents, premake 4 (the current month and 4 ahead).
//   first run:    pgmaint create-partitions  vs  partman.create_parent() for each parent
//   steady state: pgmaint create-partitions  vs  partman.run_maintenance()   (nothing to do)
// Needs Debian's postgresql-15-partman:  apt-get install -y postgresql-15-partman
//   npm run bench:partitions [-- --parents 200 --rounds 3]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DateTime } from 'luxon';
import pg from 'pg';
import { loadConfig } from '../src/core/config.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createLogger } from '../src/core/logger.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { createRuntime } from '../src/pgmaint.ts';

const { values } = parseArgs({
  options: { parents: { type: 'string', default: '200' }, rounds: { type: 'string', default: '3' } },
});
const PARENTS = Number(values.parents);
const ROUNDS = Number(values.rounds);

if (!fs.existsSync('/usr/share/postgresql/15/extension/pg_partman.control')) {
  console.error('pg_partman is not installed: apt-get install -y postgresql-15-partman');
  process.exit(2);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-part-'));
fs.chmodSync(dir, 0o755);
const [server, redis] = await Promise.all([
  startPostgres({ dir: path.join(dir, 'pg') }),
  startRedis({ dir: path.join(dir, 'redis') }),
]);
await createDatabase(server, 'ours');
await createDatabase(server, 'partman');

const tables = Array.from({ length: PARENTS }, (_, i) => `bench.t${String(i + 1).padStart(3, '0')}`);
const schemaSql =
  `create schema bench;\n` +
  tables
    .map(
      (t) =>
        `create table ${t} (id bigint not null, ts timestamptz not null, v int) partition by range (ts); create ` +
        `index on ${t} (id);`,
    )
    .join('\n');

async function withClient<T>(db: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: server.url(db) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

await withClient('ours', (c) => c.query(schemaSql));
await withClient('partman', async (c) => {
  await c.query(schemaSql);
  await c.query('create schema partman; create extension pg_partman schema partman');
});

const configFile = path.join(dir, 'pgmaint.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({ partitions: tables.map((table) => ({ table, column: 'ts', interval: 'month', premake: 4 })) }),
);
const config = loadConfig({
  DATABASE_URL: server.url('ours'),
  REDIS_URL: redis.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: configFile,
});
const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
await rt.history.migrate();
startWorkers(rt, ['create-partitions']);

async function oursOnce(): Promise<{ ms: number; created: number }> {
  const t0 = performance.now();
  const { job } = await rt.queues.enqueue('create-partitions', {});
  const result = (await job.waitUntilFinished(await queueEvents())) as { policies: { created: unknown[] }[] };
  return { ms: performance.now() - t0, created: result.policies.reduce((n, p) => n + p.created.length, 0) };
}

let events: import('bullmq').QueueEvents | undefined;
async function queueEvents() {
  if (!events) {
    const { QueueEvents } = await import('bullmq');
    events = new QueueEvents('create-partitions', {
      connection: rt.connections.redis('bench-events'),
      prefix: config.redis.prefix,
    });
    await events.waitUntilReady();
  }
  return events;
}
await queueEvents();

const monthStart = DateTime.utc().startOf('month').toISO();
const partmanFirst = await withClient('partman', async (c) => {
  const t0 = performance.now();
  for (const t of tables)
    await c.query(
      `select partman.create_parent($1, 'ts', 'native', 'monthly', p_premake := 4, p_start_partition := $2)`,
      [t, monthStart],
    );
  return performance.now() - t0;
});
const oursFirst = await oursOnce();

const countPartitions = (db: string) =>
  withClient(db, async (c) =>
    Number(
      (
        await c.query(
          `select count(*) as n from pg_inherits i join pg_class p on p.oid = i.inhparent join pg_class c on c.oid ` +
            `= i.inhrelid join pg_namespace n on n.oid = p.relnamespace where n.nspname = 'bench' and c.relkind = 'r'`,
        )
      ).rows[0].n,
    ),
  );

const partmanSteady: number[] = [];
const oursSteady: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  partmanSteady.push(
    await withClient('partman', async (c) => {
      const t0 = performance.now();
      await c.query(`select partman.run_maintenance(p_analyze := false, p_jobmon := false)`);
      return performance.now() - t0;
    }),
  );
  const o = await oursOnce();
  if (o.created !== 0) throw new Error(`steady state created ${o.created} partitions`);
  oursSteady.push(o.ms);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const rows = [
  ['', 'pg_partman 4.x', 'pgmaint', 'ratio'],
  [
    `first run, ${PARENTS} parents (ms)`,
    partmanFirst.toFixed(0),
    oursFirst.ms.toFixed(0),
    `${(oursFirst.ms / partmanFirst).toFixed(2)}×`,
  ],
  [
    `steady state, median of ${ROUNDS} (ms)`,
    median(partmanSteady).toFixed(0),
    median(oursSteady).toFixed(0),
    `${(median(oursSteady) / median(partmanSteady)).toFixed(2)}×`,
  ],
  ['partitions after', String(await countPartitions('partman')), String(await countPartitions('ours')), ''],
];
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const r of rows)
  console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
console.log(
  `targets: first run and steady state no slower than pg_partman — ` +
    `${oursFirst.ms <= partmanFirst && median(oursSteady) <= median(partmanSteady) ? 'met' : 'NOT met'}; steady ` +
    `state under 1 s — ${median(oursSteady) < 1000 ? 'met' : 'NOT met'}`,
);

await events?.close();
await rt.close();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
