// The care jobs on the seeded dairy database, each beside its baselines, rounds interleaved:
//   daily-sales-rollup, 24-month backfill  vs  REFRESH MATERIALIZED VIEW of the same aggregation (the
//                                              peer a user would build instead), and its CONCURRENTLY form
//                                          vs  the bare SELECT … GROUP BY of the same rows (the floor)
//                                          vs  the naive way: per day, lines fetched into the app and
//                                              one upsert per aggregate row (14 days, projected; one sample)
//   one night's rollup (yesterday + 3 days of lookback) vs the same refreshes
//   warm-cache, 100,000 per-row keys       vs  redis-benchmark -t set -P 16 on the same Redis
// Every side is timed from outside: the rollup from enqueue to result (a backfill into an
// emptied table, as a refresh rebuilds from nothing), the SQL sides from the client.
//   npm run bench:care [-- --scale large|default --rounds 3]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DateTime } from 'luxon';
import pg from 'pg';
import { AGGREGATE_CTES } from '../jobs/daily-sales-rollup.ts';
import { loadConfig } from '../src/core/config.ts';
import { BUSINESS_TIME_ZONE } from '../src/core/constants.ts';
import { seedDairy, SCALES, type Scale } from '../src/dev/dairy.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createLogger } from '../src/core/logger.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { jobRunner } from './run-job.ts';
import { createRuntime } from '../src/pgmaint.ts';
import { quoteLiteral } from '../src/core/sql.ts';
import { interleave, loadAverage, median, printTable, row, type Sample } from './method.ts';

const { values } = parseArgs({
  options: { scale: { type: 'string', default: 'large' }, rounds: { type: 'string', default: '3' } },
});
const ROUNDS = Math.max(3, Number(values.rounds));
const scale = values.scale as Scale;
if (!(scale in SCALES)) throw new Error(`--scale: one of ${Object.keys(SCALES).join(', ')}`);
const NAIVE_DAYS = 14;
const WARM_KEYS = 100_000;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-care-'));
fs.chmodSync(dir, 0o755);
const [server, redis] = await Promise.all([
  startPostgres({ dir: path.join(dir, 'pg'), settings: { shared_buffers: "'1GB'", work_mem: "'64MB'" } }),
  startRedis({ dir: path.join(dir, 'redis') }),
]);
await createDatabase(server, 'dairy');
console.error(`seeding at scale ${scale}…`);
const seeded = await seedDairy(server.url('dairy'), scale, { log: (m) => console.error(`  ${m}`) });
const db = new pg.Client({ connectionString: server.url('dairy') });
await db.connect();

const now = DateTime.now().setZone(BUSINESS_TIME_ZONE);
const yesterday = now.startOf('day').minus({ days: 1 });
const first = now.startOf('month').minus({ months: SCALES[scale].months - 1 });
const range = { from: first.toISODate()!, to: yesterday.toISODate()! };

const configFile = path.join(dir, 'pgmaint.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({
    cache: {
      redisUrlEnv: 'CACHE_REDIS_URL',
      keyPrefix: 'bench:',
      queries: [
        {
          key: 'agg:{date}:{company_id}:{product_tmpl_id}:{channel}',
          sql: `select * from analytics.daily_sales_agg order by date desc limit ${WARM_KEYS}`,
          ttlSeconds: 3600,
          perRow: true,
        },
      ],
    },
  }),
);
const config = loadConfig({
  DATABASE_URL: server.url('dairy'),
  REDIS_URL: redis.url,
  CACHE_REDIS_URL: `${redis.url}/2`,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: configFile,
});
const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
await rt.history.migrate();
startWorkers(rt, ['daily-sales-rollup', 'warm-cache']);
const job = jobRunner(rt);

// The floor: the rollup's own aggregation over the same rows, read and thrown away.
const aggOnly = `${AGGREGATE_CTES} select count(*) from agg where ` + `$1::date <= $2::date`;
const bounds = (a: DateTime, b: DateTime) => [
  a.toISODate(),
  b.toISODate(),
  BUSINESS_TIME_ZONE,
  a.toISO(),
  b.plus({ days: 1 }).toISO(),
];
// The peer: a materialized view of the same aggregation over the same days.
const literals = bounds(first, yesterday);
const viewSql = AGGREGATE_CTES.replace(/\$3/g, quoteLiteral(String(literals[2])))
  .replace(/\$4/g, quoteLiteral(String(literals[3])))
  .replace(/\$5/g, quoteLiteral(String(literals[4])));
await db.query(
  `create materialized view analytics.daily_sales_mv as ${viewSql} select * from agg with no data;
   create unique index on analytics.daily_sales_mv (day, company_id, product_tmpl_id, channel)`,
);
await db.query('refresh materialized view analytics.daily_sales_mv'); // populated: CONCURRENTLY needs it
const sql =
  (text: string, args: unknown[] = []) =>
  async () => {
    const t0 = performance.now();
    await db.query(text, args);
    return performance.now() - t0;
  };
console.log(`load average before: ${loadAverage()}`);
console.error('backfill rounds…');
let backfill!: Awaited<ReturnType<typeof job>>;
const [scan, refresh, refreshConcurrently, rollup] = await interleave(
  [
    { name: 'bare GROUP BY scan', run: sql(aggOnly, literals) },
    { name: 'REFRESH MATERIALIZED VIEW', run: sql('refresh materialized view analytics.daily_sales_mv') },
    {
      name: 'REFRESH … CONCURRENTLY',
      run: sql('refresh materialized view concurrently analytics.daily_sales_mv'),
    },
    {
      name: 'daily-sales-rollup backfill',
      run: async () => {
        await db.query('truncate analytics.daily_sales_agg');
        backfill = await job('daily-sales-rollup', { ...range, chunkDays: 31 });
        return backfill.ms;
      },
    },
  ],
  ROUNDS,
);

console.error(`naive way over ${NAIVE_DAYS} days…`);
const naiveStart = performance.now();
for (let d = yesterday.minus({ days: NAIVE_DAYS - 1 }); d <= yesterday; d = d.plus({ days: 1 })) {
  const lo = d.toISO();
  const hi = d.plus({ days: 1 }).toISO();
  const { rows } = await db.query(
    `select o.company_id, l.product_tmpl_id, 'online' as channel,
      l.order_id, l.qty::float8 as qty, l.price_subtotal::float8 as amount
       from sales.sale_order_line l join sales.sale_order o on o.id = l.order_id and o.date_order = l.date_order
      where l.date_order >= $1 and l.date_order < $2 and o.state in ('sale','done')
     union all
     select company_id, product_tmpl_id, 'pos', pos_order_id, qty::float8, price_subtotal::float8 from
       sales.pos_order_line where date_order >= $1 and date_order < $2`,
    [lo, hi],
  );
  const groups = new Map<
    string,
    { c: number; p: number; ch: string; qty: number; rev: number; orders: Set<number>; rq: number; ra: number }
  >();
  for (const r of rows) {
    const k = `${r.company_id}/${r.product_tmpl_id}/${r.channel}`;
    let g = groups.get(k);
    if (!g) {
      g = { c: r.company_id, p: r.product_tmpl_id, ch: r.channel, qty: 0, rev: 0, orders: new Set(), rq: 0, ra: 0 };
      groups.set(k, g);
    }
    g.orders.add(Number(r.order_id));
    if (r.qty > 0) {
      g.qty += r.qty;
      g.rev += r.amount;
    } else {
      g.rq -= r.qty;
      g.ra -= r.amount;
    }
  }
  for (const g of groups.values()) {
    await db.query(
      `insert into analytics.daily_sales_agg
        (date, company_id, product_tmpl_id, channel, qty_sold, revenue, order_count, refund_qty, refund_amount)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (date, company_id, product_tmpl_id, channel) do update
       set qty_sold = excluded.qty_sold, revenue = excluded.revenue, order_count = excluded.order_count,
         refund_qty = excluded.refund_qty, refund_amount = excluded.refund_amount`,
      [d.toISODate(), g.c, g.p, g.ch, g.qty, g.rev, g.orders.size, g.rq, g.ra],
    );
  }
}
const naivePerDay = (performance.now() - naiveStart) / NAIVE_DAYS;
const naiveProjected = naivePerDay * backfill.result.days;

console.error('nightly rounds…');
const [night] = await interleave(
  [{ name: 'rollup, one night', run: async () => (await job('daily-sales-rollup', {})).ms }],
  Math.max(5, ROUNDS),
);

console.error('warm-cache and redis-benchmark…');
const warm = await job('warm-cache', {});
const w = warm.result.written[0] as { keys: number; bytes: number; ms: number; writeMs: number };
const redisBenchmark = (extra: string[]) => {
  const out = execFileSync('redis-benchmark', [
    '-h',
    '127.0.0.1',
    '-p',
    String(redis.port),
    '-t',
    'set',
    '-P',
    '16',
    '-n',
    '400000',
    '-q',
    '--csv',
    ...extra,
  ]).toString();
  return Number(/"SET","([\d.]+)"/.exec(out)?.[1]);
};
const setPerSec = redisBenchmark([]);
const avgBytes = Math.round(w.bytes / w.keys);
const setPerSecSized = redisBenchmark(['-d', String(avgBytes)]);
// The job writes over one connection; redis-benchmark's default is 50 of them.
const setPerSecOneConn = redisBenchmark(['-d', String(avgBytes), '-c', '1']);
const keysPerSecWrite = w.keys / (w.writeMs / 1000);
const keysPerSecJob = w.keys / (w.ms / 1000);

const lines = Object.values(seeded).reduce((a, b) => a + b, 0);
console.log(
  `scale ${scale}: ${seeded['sales.sale_order_line']} order lines, ${seeded['sales.pos_order_line']} POS lines ` +
    `(${lines} rows seeded); backfill ${backfill.result.days} days, ${backfill.result.upserted} aggregate rows`,
);
const naive: Sample = { name: 'naive', ms: [naiveProjected] };
const rateRow = (what: string, ours: number, theirs: number) => [
  what,
  ours.toFixed(0),
  theirs.toFixed(0),
  `${(ours / theirs).toFixed(2)}×`,
  '',
];
printTable(
  `daily-sales-rollup against its peers, ${ROUNDS} rounds interleaved; median (min–max)`,
  ['', 'pgmaint', 'baseline', 'ratio', 'target'],
  [
    row('backfill vs REFRESH MATERIALIZED VIEW (s)', rollup!, refresh!, '≤ 1.0×'),
    row('backfill vs REFRESH … CONCURRENTLY (s)', rollup!, refreshConcurrently!),
    row('backfill vs the bare GROUP BY scan, the floor (s)', rollup!, scan!),
    row(`backfill vs naive per-row upserts (projected, one sample) (s)`, rollup!, naive),
    row('one night (4 days) vs REFRESH MATERIALIZED VIEW (s)', night!, refresh!, '≤ 0.02× (1/50)'),
    row('one night (4 days) vs REFRESH … CONCURRENTLY (s)', night!, refreshConcurrently!),
  ],
);
printTable(
  'warm-cache against redis-benchmark (one sample each)',
  ['keys/s', 'pgmaint', 'redis-benchmark', 'ratio', ''],
  [
    rateRow(`writing ${w.keys} keys vs SET -P 16, 50 connections`, keysPerSecWrite, setPerSec),
    rateRow('  the whole warm-cache job, query included', keysPerSecJob, setPerSec),
    rateRow(`  vs redis-benchmark with our value size (-d ${avgBytes})`, keysPerSecWrite, setPerSecSized),
    rateRow('  vs the same on one connection (-c 1)', keysPerSecWrite, setPerSecOneConn),
  ],
);
const backfillRatio = median(rollup!.ms) / median(refresh!.ms);
const nightRatio = median(night!.ms) / median(refresh!.ms);
console.log(
  `targets: backfill ≤ 1.0× REFRESH MATERIALIZED VIEW — ${backfillRatio <= 1 ? 'met' : 'NOT met'} ` +
    `(${backfillRatio.toFixed(2)}×); one night ≤ 1/50 of it — ${nightRatio <= 0.02 ? 'met' : 'NOT met'} ` +
    `(${nightRatio.toFixed(3)}×)`,
);
console.log(`load average after: ${loadAverage()}`);

await db.end();
await job.close();
await rt.close();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
