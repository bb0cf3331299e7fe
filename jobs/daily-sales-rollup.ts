// daily-sales-rollup: analytics.daily_sales_agg, one row per local day × company ×
// product template × channel, from the lines of confirmed orders (state sale or
// done; channel "online") and POS lines (channel "pos"). Days are days of the
// business time zone (luxon computes "yesterday" there, never in the server's
// zone). Each chunk of days is one statement: aggregate, upsert the rows that
// changed, delete the rows whose sources vanished (a cancelled order); days with no
// rows yet get a plain insert. Running it twice changes nothing; afterwards the table
// equals a GROUP BY over the sources for every covered day.
import { DateTime, IANAZone } from 'luxon';
import { z } from 'zod';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';
import { governorField } from '../src/core/governor-policy.ts';

const UNIQUE_VIOLATION = '23505';

const isoDate = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}$/, 'must be a date, YYYY-MM-DD')
  .refine((d) => DateTime.fromISO(d).isValid, 'is not a valid date');

export const payload = z
  .object({
    target: targetField,
    /** Backfill: first and last local day (inclusive). Default: yesterday and the lookbackDays before it. */
    from: isoDate.optional(),
    to: isoDate.optional(),
    /** Days before yesterday re-aggregated every night (late or corrected orders). */
    lookbackDays: z.number().int().min(0).max(366).default(3),
    /** The business time zone; default businessTimeZone of the config (Asia/Dhaka). */
    timeZone: z
      .string()
      .refine((v) => IANAZone.isValidZone(v), 'must be an IANA time zone')
      .optional(),
    /** Days per statement (and per transaction) in a backfill. */
    chunkDays: z.number().int().min(1).max(366).default(31),
    /** Chunks aggregated at once on separate connections (days never overlap, so they never conflict).
     * INSERT … SELECT runs without parallel workers; this is how a backfill uses more than one core. */
    parallel: z.number().int().min(1).max(8).default(2),
    /** The instant "yesterday" is computed from (tests, re-runs); default the clock. */
    now: z.iso.datetime({ offset: true }).optional(),
    /** The load governor's keys for this run (docs/governor.md). */
    governor: governorField,
  })
  .superRefine((p, ctx) => {
    if ((p.from === undefined) !== (p.to === undefined))
      ctx.addIssue({ code: 'custom', path: [p.from ? 'to' : 'from'], message: 'from and to go together' });
    if (p.from && p.to && p.from > p.to)
      ctx.addIssue({ code: 'custom', path: ['to'], message: 'must not be before from' });
  });

// $1, $2: the chunk's first and last local day; $3: the zone; $4, $5: the instants
// its first day starts and the day after its last starts (luxon, in the zone).
// Constant bounds let the planner prune partitions and use the date_order indexes.
/** The aggregation, as the CTEs src and agg (one row per day × company × product × channel). */
export const AGGREGATE_CTES = `
with src as (
  select (l.date_order at time zone $3)::date as day, o.company_id, l.product_tmpl_id, 'online'::text as channel,
    l.order_id, l.qty, l.price_subtotal
    from sales.sale_order_line l
    join sales.sale_order o on o.id = l.order_id and o.date_order = l.date_order
   where l.date_order >= $4::timestamptz and l.date_order < $5::timestamptz and o.date_order >= $4::timestamptz and
     o.date_order < $5::timestamptz
     and o.state in ('sale', 'done')
  union all
  select (p.date_order at time zone $3)::date, p.company_id, p.product_tmpl_id, 'pos', p.pos_order_id, p.qty,
    p.price_subtotal
    from sales.pos_order_line p
   where p.date_order >= $4::timestamptz and p.date_order < $5::timestamptz
), agg as (
  select day, company_id, product_tmpl_id, channel,
         coalesce(sum(qty) filter (where qty > 0), 0) as qty_sold,
         coalesce(sum(price_subtotal) filter (where qty > 0), 0) as revenue,
         count(distinct order_id)::int as order_count,
         coalesce(-sum(qty) filter (where qty < 0), 0) as refund_qty,
         coalesce(-sum(price_subtotal) filter (where qty < 0), 0) as refund_amount
    from src group by 1, 2, 3, 4
)`;

const INSERT_AGG = `insert into analytics.daily_sales_agg as a (date, company_id, product_tmpl_id, channel, qty_sold,
    revenue, order_count, refund_qty, refund_amount, updated_at)
  select day, company_id, product_tmpl_id, channel, qty_sold, revenue, order_count, refund_qty, refund_amount, now()
    from agg`;

/** Days that already hold rows: upsert the rows that changed, delete those whose sources vanished. */
export const ROLLUP_SQL = `${AGGREGATE_CTES}, upserted as (
  ${INSERT_AGG}
   order by 1, 2, 3, 4 -- in index order: each insert lands beside the one before
  on conflict (date, company_id, product_tmpl_id, channel) do update
     set qty_sold = excluded.qty_sold, revenue = excluded.revenue, order_count = excluded.order_count,
         refund_qty = excluded.refund_qty, refund_amount = excluded.refund_amount, updated_at = now()
   where (a.qty_sold, a.revenue, a.order_count, a.refund_qty, a.refund_amount)
         is distinct from (excluded.qty_sold, excluded.revenue, excluded.order_count, excluded.refund_qty,
           excluded.refund_amount)
  returning 1
), deleted as (
  delete from analytics.daily_sales_agg a
   where a.date between $1::date and $2::date
     and not exists (select 1 from agg g where g.day = a.date and g.company_id = a.company_id and g.product_tmpl_id =
       a.product_tmpl_id and g.channel = a.channel)
  returning 1
)
select (select count(*) from upserted)::int as upserted, (select count(*) from deleted)::int as deleted, (select
  count(*) from agg)::int as groups`;

/**
 * Days that hold no rows yet (a backfill, yesterday): a plain insert, a third cheaper
 * than the upsert. A run that fills the same days meanwhile makes it fail on the unique
 * key, and the chunk is done again as an upsert.
 */
export const FIRST_FILL_SQL = `${AGGREGATE_CTES}, inserted as (
  ${INSERT_AGG} where $1::date <= $2::date
  returning 1
)
select (select count(*) from inserted)::int as upserted, 0 as deleted, (select count(*) from agg)::int as groups`;

const HAS_ROWS_SQL = 'select exists (select 1 from analytics.daily_sales_agg where date between $1 and $2) as yes';

const job = defineJob({
  name: 'daily-sales-rollup',
  description:
    'Idempotent pre-aggregation of daily sales (online and POS) into analytics.daily_sales_agg; yesterday plus a ' +
    'lookback, or a backfill range.',
  payload,
  defaults: { attempts: 3, backoffMs: 30_000, timeoutMs: 2 * 3_600_000, concurrency: 1 },
  deduplicate: true,
  async handler(ctx, p) {
    const zone = p.timeZone ?? ctx.config.businessTimeZone;
    const now = p.now ? DateTime.fromISO(p.now) : DateTime.now();
    const yesterday = now.setZone(zone).startOf('day').minus({ days: 1 });
    const first = p.from ? DateTime.fromISO(p.from, { zone }) : yesterday.minus({ days: p.lookbackDays });
    const last = p.to ? DateTime.fromISO(p.to, { zone }) : yesterday;
    const days = Math.round(last.diff(first, 'days').days) + 1;
    await ctx.log(`aggregating ${first.toISODate()} … ${last.toISODate()} (${days} days, ${zone})`);
    const started = Date.now();
    let upserted = 0;
    let deleted = 0;
    let groups = 0;
    const chunks: [DateTime, DateTime][] = [];
    for (let chunk = first; chunk <= last; chunk = chunk.plus({ days: p.chunkDays }))
      chunks.push([chunk, DateTime.min(chunk.plus({ days: p.chunkDays - 1 }), last)]);
    let doneDays = 0;
    const lane = async () => {
      for (let next = chunks.shift(); next; next = chunks.shift()) {
        const [chunk, end] = next;
        // A unit: one chunk of days (chunkDays; a day with chunkDays 1), one statement and commit.
        await ctx.governor.gate(`days ${chunk.toISODate()} … ${end.toISODate()}`);
        const args = [chunk.toISODate(), end.toISODate(), zone, chunk.toISO(), end.plus({ days: 1 }).toISO()];
        const counts = await rollupChunk(ctx, args);
        upserted += counts.upserted;
        deleted += counts.deleted;
        groups += counts.groups;
        doneDays += Math.round(end.diff(chunk, 'days').days) + 1;
        await ctx.progress(
          (100 * doneDays) / days,
          `${chunk.toISODate()} … ${end.toISODate()}: ${counts.upserted} rows upserted, ${counts.deleted} deleted`,
        );
      }
    };
    // Every chunk commits on its own: a failed run leaves whole days done, and the retry redoes them as no-ops.
    // On a failure the other lanes finish their current chunk and take no more; then the run fails.
    const settled = await Promise.allSettled(
      Array.from({ length: Math.min(p.parallel, chunks.length) }, () =>
        lane().catch((err) => {
          chunks.length = 0;
          throw err;
        }),
      ),
    );
    const failure = settled.find((r) => r.status === 'rejected');
    if (failure) throw failure.reason;
    return {
      from: first.toISODate(),
      to: last.toISODate(),
      timeZone: zone,
      days,
      groups,
      upserted,
      deleted,
      durationMs: Date.now() - started,
    };
  },
});

type ChunkCounts = { upserted: number; deleted: number; groups: number };

async function rollupChunk(ctx: JobContext, args: (string | null)[]): Promise<ChunkCounts> {
  const empty = !(await ctx.pool.query<{ yes: boolean }>(HAS_ROWS_SQL, args.slice(0, 2))).rows[0]!.yes;
  if (empty) {
    try {
      return (await ctx.pool.query<ChunkCounts>(FIRST_FILL_SQL, args)).rows[0]!;
    } catch (err) {
      if ((err as { code?: string }).code !== UNIQUE_VIOLATION) throw err;
      await ctx.log(`${args[0]} … ${args[1]}: filled meanwhile by another run; upserting instead`);
    }
  }
  return (await ctx.pool.query<ChunkCounts>(ROLLUP_SQL, args)).rows[0]!;
}

export default job;

/** What a daily-sales-rollup run returns (its result in the run history and the API). */
export type DailySalesRollupResult = JobResult<typeof job>;
