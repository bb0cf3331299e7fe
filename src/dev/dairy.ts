// The dairy ERP's database (docs/dairy-erp.md) for the demo, the tests and the
// benchmarks: catalog, sales (monthly-partitioned orders and lines, POS lines), IoT
// readings (daily partitions), the herd and its milk, and the daily sales aggregate.
// The seeder is set-based (INSERT … SELECT over generate_series), deterministic, and one transaction.
import { DateTime } from 'luxon';
import pg from 'pg';
import { withTransaction } from '../core/sql.ts';
import { BUSINESS_TIME_ZONE } from '../core/constants.ts';
import { ConfigError, ServiceUnavailableError } from '../core/errors.ts';
import { safeUrl } from '../core/redact.ts';

export const DAIRY_SCHEMA = `
create schema if not exists catalog;
create schema if not exists sales;
create schema if not exists farm;
create schema if not exists iot;
create schema if not exists analytics;
create table if not exists catalog.product_category (id int primary key, name text not null unique);
create table if not exists catalog.product_brand (id int primary key, name text not null unique);
create table if not exists catalog.product_template (
  id int primary key, name text not null, category_id int not null references catalog.product_category,
  brand_id int not null references catalog.product_brand, list_price numeric(12,2) not null,
  active boolean not null default true);
create table if not exists farm.animal (
  id serial primary key, tag_number text not null unique, breed text not null,
  status text not null check (status in ('active','sold','deceased','dry','culled')));
create table if not exists farm.milk_production (
  id bigint generated always as identity primary key, animal_id int not null references farm.animal,
  day date not null, shift text not null check (shift in ('morning','evening')), liters numeric(6,2) not null,
  unique (animal_id, day, shift));
create table if not exists sales.sale_order (
  id bigint generated always as identity, company_id int not null, partner_id int not null, user_id int not null
    default 1,
  state text not null check (state in ('draft','sent','sale','done','cancel')),
  date_order timestamptz not null, amount_total numeric(12,2) not null,
  primary key (id, date_order)) partition by range (date_order);
create table if not exists sales.sale_order_default partition of sales.sale_order default;
-- Lines carry their order's date_order: the partition key, and the rollup's day.
create table if not exists sales.sale_order_line (
  id bigint generated always as identity, order_id bigint not null, date_order timestamptz not null,
  product_tmpl_id int not null, qty numeric(12,3) not null, price_unit numeric(12,2) not null,
  price_subtotal numeric(14,2) not null,
  primary key (id, date_order)) partition by range (date_order);
create table if not exists sales.sale_order_line_default partition of sales.sale_order_line default;
create index if not exists sale_order_line_order_idx on sales.sale_order_line (order_id);
-- The POS channel; a negative quantity is a refund.
create table if not exists sales.pos_order_line (
  id bigint generated always as identity primary key, pos_order_id bigint not null, company_id int not null,
  date_order timestamptz not null, product_tmpl_id int not null, qty numeric(12,3) not null,
  price_unit numeric(12,2) not null, price_subtotal numeric(14,2) not null);
create index if not exists pos_order_line_date_idx on sales.pos_order_line (date_order);
create table if not exists iot.sensor_reading (
  sensor_id int not null, read_at timestamptz not null, value double precision not null,
  unit text not null, quality smallint not null default 100) partition by range (read_at);
create table if not exists iot.sensor_reading_default partition of iot.sensor_reading default;
create table if not exists analytics.daily_sales_agg (
  date date not null, company_id int not null, product_tmpl_id int not null,
  channel text not null check (channel in ('online','pos')),
  qty_sold numeric(14,3) not null, revenue numeric(16,2) not null, order_count int not null,
  refund_qty numeric(14,3) not null, refund_amount numeric(16,2) not null,
  updated_at timestamptz not null default now(),
  unique (date, company_id, product_tmpl_id, channel));
`;

export const SCALES = {
  /** Tests: three months, a few thousand lines. */
  small: { months: 3, orders: 2_000, posLines: 2_000, sensors: 5, iotDays: 7 },
  /** The demo: 24 months, about a million order lines. */
  default: { months: 24, orders: 250_000, posLines: 200_000, sensors: 50, iotDays: 90 },
  /** Benchmarks: about ten million order lines. */
  large: { months: 24, orders: 2_500_000, posLines: 2_000_000, sensors: 50, iotDays: 90 },
} as const;
export type Scale = keyof typeof SCALES;

/** Monthly partitions of the order tables and daily ones of IoT readings, at local midnights in the business zone. */
function partitionDdl(months: number, iotDays: number, now: DateTime): string {
  const out: string[] = [];
  const first = now
    .setZone(BUSINESS_TIME_ZONE)
    .startOf('month')
    .minus({ months: months - 1 });
  for (let m = first; m < now.plus({ months: 4 }); m = m.plus({ months: 1 })) {
    const from = m.toISO();
    const to = m.plus({ months: 1 }).toISO();
    for (const t of ['sale_order', 'sale_order_line']) {
      out.push(
        `create table if not exists sales.${t}_p${m.toFormat('yyyyMM')} partition of sales.${t} for values from ` +
          `('${from}') to ('${to}');`,
      );
    }
  }
  const day0 = now
    .setZone(BUSINESS_TIME_ZONE)
    .startOf('day')
    .minus({ days: iotDays - 1 });
  for (let d = day0; d < now.plus({ days: 8 }); d = d.plus({ days: 1 })) {
    out.push(
      `create table if not exists iot.sensor_reading_p${d.toFormat('yyyyMMdd')} partition of iot.sensor_reading for ` +
        `values from ('${d.toISO()}') to ('${d.plus({ days: 1 }).toISO()}');`,
    );
  }
  return out.join('\n');
}

/** The tables the seeder fills; a database whose catalog has rows and one of these none was seeded halfway. */
const SEEDED_TABLES = [
  'farm.milk_production',
  'sales.sale_order',
  'sales.sale_order_line',
  'sales.pos_order_line',
  'iot.sensor_reading',
] as const;

/**
 * Creates the schema and, when the catalog is empty, fills it at `scale`, all in one transaction: a seed
 * that is stopped (killed, a lost connection) leaves no rows, and the next seed starts over. A database
 * whose catalog has rows while a table the seeder fills has none (seeded halfway by a pgmaint before
 * seeds were one transaction) is refused, naming what fixes it; `reseedIncomplete` (the demo, whose
 * database is its own) empties the dairy tables and seeds them again instead. Returns what it inserted.
 */
export async function seedDairy(
  url: string,
  scale: Scale = 'default',
  opts: { now?: Date; log?: (m: string) => void; urlSource?: string; reseedIncomplete?: boolean } = {},
): Promise<Record<string, number>> {
  const s = SCALES[scale];
  const now = DateTime.fromJSDate(opts.now ?? new Date());
  const log = opts.log ?? (() => undefined);
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  // A database that does not answer is named by the variable that points at it (exit 3 in the CLI).
  await client.connect().catch((err: Error) => {
    throw new ServiceUnavailableError(
      `${opts.urlSource ?? 'database URL'}: cannot reach PostgreSQL at ${safeUrl(url)}: ${err.message}`,
    );
  });
  try {
    await client.query(DAIRY_SCHEMA);
    await client.query(partitionDdl(s.months, s.iotDays, now));
    // The care jobs' extensions (contrib): statement statistics, index bloat, corruption checks.
    // A role that may not create them leaves them to the operator; the jobs say what is missing.
    for (const ext of ['pg_stat_statements', 'pgstattuple', 'amcheck'])
      await client.query(`create extension if not exists ${ext}`).catch((err) => log(`${ext}: ${err.message}`));
    const counts = await withTransaction(client, async () => {
      // Two seeds at once (compose's seed service restarted) wait for each other: the second finds the rows.
      await client.query(`select pg_advisory_xact_lock(hashtext('pgmaint.dairy-seed'))`);
      if (await hasRows(client, 'catalog.product_template')) {
        const empty = [];
        for (const t of SEEDED_TABLES) if (!(await hasRows(client, t))) empty.push(t);
        if (!empty.length) return undefined;
        if (!opts.reseedIncomplete) throw halfSeeded(url, opts.urlSource ?? 'database URL', empty);
        log(`the database was seeded halfway (${empty.join(', ')} empty): emptying the dairy tables, seeding again`);
        await client.query(
          `truncate catalog.product_category, catalog.product_brand, catalog.product_template, farm.animal,
             farm.milk_production, sales.sale_order, sales.sale_order_line, sales.pos_order_line, iot.sensor_reading,
             analytics.daily_sales_agg restart identity cascade`,
        );
      }
      return fill(client, s, now, log);
    });
    if (!counts) return {};
    // After the commit: the planner's statistics for what was just written (analyze holds no lock a reader minds).
    await client.query('analyze');
    return counts;
  } finally {
    await client.end();
  }
}

async function hasRows(client: pg.ClientBase, table: string): Promise<boolean> {
  const { rows } = await client.query<{ any: boolean }>(`select exists (select 1 from ${table}) as any`);
  return rows[0]!.any;
}

function halfSeeded(url: string, urlSource: string, empty: string[]): ConfigError {
  const db = decodeURIComponent(new URL(url).pathname.slice(1)) || 'postgres';
  return new ConfigError(
    `${urlSource}: the database ${db} at ${safeUrl(url)} was seeded halfway (an earlier seed was stopped): ` +
      `catalog.product_template has rows, ${empty.join(', ')} ${empty.length > 1 ? 'have' : 'has'} none; ` +
      `re-create it and seed again (dropdb ${db} && createdb ${db} && pgmaint seed), or for the demo stop it ` +
      'and run npm run demo again (it seeds its own database again)',
  );
}

/** Inserts the dairy data at scale `s` on `client`, inside the caller's transaction. */
async function fill(
  client: pg.ClientBase,
  s: (typeof SCALES)[Scale],
  now: DateTime,
  log: (m: string) => void,
): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const run = async (name: string, sql: string, params: unknown[] = []) => {
    const t0 = Date.now();
    const r = await client.query(sql, params);
    counts[name] = (counts[name] ?? 0) + (r.rowCount ?? 0);
    log(`${name}: ${r.rowCount} rows in ${Date.now() - t0} ms`);
  };
  const start = now
    .setZone(BUSINESS_TIME_ZONE)
    .startOf('month')
    .minus({ months: s.months - 1 })
    .toJSDate();
  // The small catalog tables and the herd.
  await run(
    'catalog.product_category',
    `insert into catalog.product_category
        select g, (array['Liquid milk','Yogurt','Cheese','Butter','Ghee','Ice cream','Sweets','Cream',
          'Milk powder','Lassi','Paneer','Feed'])[g] from generate_series(1, 12) g`,
  );
  await run(
    'catalog.product_brand',
    `insert into catalog.product_brand select g, 'Brand ' || chr(64 + g) from generate_series(1, 6) g`,
  );
  await run(
    'catalog.product_template',
    `insert into catalog.product_template
        select g, 'Product ' || g, 1 + g % 12, 1 + g % 6, round((20 + (g * 37) % 480)::numeric, 2), g % 17 <> 0 from
          generate_series(1, 200) g`,
  );
  await run(
    'farm.animal',
    `insert into farm.animal (tag_number, breed, status)
        select 'BD-' || lpad(g::text, 4, '0'), (array['Holstein Friesian','Sahiwal','Red Chittagong'])[1 + g % 3],
               (array['active','active','active','dry','sold'])[1 + g % 5] from generate_series(1, 255) g`,
  );
  // 75 lactating cows, two milkings a day, over the period (capped at two years).
  await run(
    'farm.milk_production',
    `insert into farm.milk_production (animal_id, day, shift, liters)
        select a.id, d::date, sh, round((4 + (a.id * 7 + extract(doy from d)::int) % 5 + case sh when 'morning' then
          1.5 else 0 end)::numeric, 2)
          from (select id from farm.animal where status = 'active' order by id limit 75) a
          cross join generate_series($1::timestamptz, $2::timestamptz - interval '1 day', interval '1 day') d
          cross join unnest(array['morning','evening']) sh`,
    [start, now.toJSDate()],
  );

  // Orders spread evenly over the period; ~70 % confirmed (sale/done), the rest draft, sent or cancelled.
  const span = `($2::timestamptz - $1::timestamptz)`;
  for (let from = 1; from <= s.orders; from += 500_000) {
    const to = Math.min(s.orders, from + 499_999);
    await run(
      'sales.sale_order',
      `insert into sales.sale_order (company_id, partner_id, user_id, state, date_order, amount_total)
        select 1 + g % 2, 1 + (g * 7919) % 5000, 1 + g % 20,
               (array['sale','done','done','sale','draft','sent','cancel','sale','done','done'])[1 + (g * 31) % 10],
               $1::timestamptz + ${span} * (g::float8 / ($4 + 1)) + make_interval(secs => (g * 104729) % 3600), 0
          from generate_series($3::bigint, $5::bigint) g`,
      [start, now.toJSDate(), from, s.orders, to],
    );
  }
  // One to seven lines an order (four on average); one line in 40 is a refund.
  const { rows: ids } = await client.query<{ lo: string; hi: string }>(
    'select min(id) as lo, max(id) as hi from sales.sale_order',
  );
  for (let lo = Number(ids[0]!.lo); lo <= Number(ids[0]!.hi); lo += 250_000) {
    await run(
      'sales.sale_order_line',
      `insert into sales.sale_order_line (order_id, date_order, product_tmpl_id, qty, price_unit, price_subtotal)
        select o.id, o.date_order, p.id, q.qty, p.list_price, q.qty * p.list_price
          from sales.sale_order o
          cross join lateral generate_series(1, 1 + (o.id % 7)::int) n
          join catalog.product_template p on p.id = 1 + ((o.id * 13 + n * 71) % 200)
          cross join lateral (select case when (o.id + n) % 40 = 0 then -1 else 1 + (o.id + n) % 6 end::numeric as
            qty) q
         where o.id between $1 and $2`,
      [lo, lo + 249_999],
    );
  }
  await client.query(`update sales.sale_order o set amount_total = l.total
      from (select order_id, sum(price_subtotal) as total from sales.sale_order_line group by order_id) l where
        l.order_id = o.id`);
  await run(
    'sales.pos_order_line',
    `insert into sales.pos_order_line
         (pos_order_id, company_id, date_order, product_tmpl_id, qty, price_unit, price_subtotal)
      select g / 3, 1 + (g / 3) % 2, $1::timestamptz + ${span} * (g::float8 / ($3 + 1)), p.id, q.qty, p.list_price,
        q.qty * p.list_price
        from generate_series(1, $3::bigint) g
        join catalog.product_template p on p.id = 1 + (g * 17) % 200
        cross join lateral (select case when g % 50 = 0 then -1 else 1 + g % 4 end::numeric as qty) q`,
    [start, now.toJSDate(), s.posLines],
  );
  // A reading every 15 minutes per sensor over the last iotDays.
  await run(
    'iot.sensor_reading',
    `insert into iot.sensor_reading (sensor_id, read_at, value, unit, quality)
      select s, t, 2 + ((s * 13 + extract(epoch from t)::bigint / 900) % 60) / 10.0, 'degC', case when (s +
        extract(epoch from t)::bigint / 900) % 97 = 0 then 40 else 100 end
        from generate_series(1, $3::int) s
        cross join generate_series(date_trunc('day', $2::timestamptz) - make_interval(days => $1::int - 1),
          $2::timestamptz, interval '15 minutes') t`,
    [s.iotDays, now.toJSDate(), s.sensors],
  );
  return counts;
}
