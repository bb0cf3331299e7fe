// daily-sales-rollup on the seeded dairy database (small scale): the aggregate
// equals a GROUP BY over the sources, a second run changes nothing, the local day
// of Asia/Dhaka decides where an order belongs, and cancelled orders drop out.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DailySalesRollupResult } from '../../jobs/daily-sales-rollup.ts';
import { seedDairy } from '../../src/dev/dairy.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntilBlocked, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
const NOW = new Date('2026-11-25T06:00:00Z');

beforeAll(async () => {
  h = await createHarness('rollup');
  await seedDairy(h.dbUrl, 'small', { now: NOW });
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['daily-sales-rollup']);
});
afterAll(() => h.close());

async function rollup(payload: object) {
  const { job } = await rt.queues.enqueue('daily-sales-rollup', payload);
  const { state, job: done } = await waitForFinished(rt.queues.get('daily-sales-rollup'), job.id!);
  expect(done.failedReason).toBeUndefined();
  expect(state).toBe('completed');
  return done.returnvalue as DailySalesRollupResult;
}

/** The aggregate read back, and the same figures computed straight from the sources
 * (written independently of the job). */
async function compare(from: string, to: string) {
  const cols =
    `date::text, company_id, product_tmpl_id, channel, qty_sold::numeric(14,3)::text, ` +
    `revenue::numeric(16,2)::text, order_count, refund_qty::numeric(14,3)::text, refund_amount::numeric(16,2)::text`;
  const agg = await h.admin.query(
    `select ${cols} from analytics.daily_sales_agg where date between $1 and $2 order by 1, 2, 3, 4`,
    [from, to],
  );
  const direct = await h.admin.query(
    `with lines as (
       select (l.date_order at time zone 'Asia/Dhaka')::date as date, o.company_id, l.product_tmpl_id, 'online' as
         channel, o.id as order_no, l.qty, l.price_subtotal
         from sales.sale_order_line l join sales.sale_order o on o.id = l.order_id where o.state in ('sale', 'done')
       union all
       select (date_order at time zone 'Asia/Dhaka')::date, company_id, product_tmpl_id, 'pos', pos_order_id, qty,
         price_subtotal from sales.pos_order_line)
     select date::text, company_id, product_tmpl_id, channel,
            sum(greatest(qty, 0))::numeric(14,3)::text as qty_sold, sum(case when qty > 0 then price_subtotal else 0
              end)::numeric(16,2)::text as revenue,
            count(distinct order_no)::int as order_count,
            sum(greatest(-qty, 0))::numeric(14,3)::text as refund_qty, sum(case when qty < 0 then -price_subtotal else
              0 end)::numeric(16,2)::text as refund_amount
       from lines where date between $1 and $2 group by 1, 2, 3, 4 order by 1, 2, 3, 4`,
    [from, to],
  );
  return { agg: agg.rows, direct: direct.rows };
}

describe('daily-sales-rollup', () => {
  it('a backfill equals a GROUP BY over the sources; a second run changes nothing', async () => {
    const first = await rollup({ from: '2026-09-01', to: '2026-11-24' });
    expect(first).toMatchObject({ from: '2026-09-01', to: '2026-11-24', days: 85, deleted: 0 });
    expect(first.upserted).toBeGreaterThan(1000);
    const { agg, direct } = await compare('2026-09-01', '2026-11-24');
    expect(agg.length).toBe(first.upserted);
    expect(agg).toEqual(direct);
    const before = await h.admin.query(
      `select max(updated_at) as t, count(*)::int as n from analytics.daily_sales_agg`,
    );

    const second = await rollup({ from: '2026-09-01', to: '2026-11-24' });
    expect(second).toMatchObject({ upserted: 0, deleted: 0, groups: first.groups });
    const after = await h.admin.query(`select max(updated_at) as t, count(*)::int as n from analytics.daily_sales_agg`);
    expect(after.rows).toEqual(before.rows);
  });

  it('the nightly run takes yesterday in Asia/Dhaka (not UTC) and the lookback days before it', async () => {
    // 01:00 on 25 November in Dhaka is still 24 November in UTC.
    const r = await rollup({ now: '2026-11-24T19:00:00Z', lookbackDays: 3 });
    expect(r).toMatchObject({ from: '2026-11-21', to: '2026-11-24', days: 4 });
  });

  it('an order at 23:30 Dhaka time counts for that local day, one at 00:30 for the next', async () => {
    // 23:30 on 20 November in Dhaka = 17:30 UTC; 00:30 on 21 November = 18:30 UTC the same UTC day.
    await h.admin.query(`insert into catalog.product_template values (999, 'Boundary ghee', 5, 1, 100, true)`);
    for (const [at, qty] of [
      ['2026-11-20T17:30:00Z', 3],
      ['2026-11-20T18:30:00Z', 5],
    ] as const) {
      const { rows } = await h.admin.query(
        `insert into sales.sale_order (company_id, partner_id, state, date_order, amount_total) values (1, 1, ` +
          `'sale', $1, $2) returning id`,
        [at, qty * 100],
      );
      await h.admin.query(
        `insert into sales.sale_order_line (order_id, date_order, product_tmpl_id, qty, price_unit, price_subtotal) ` +
          `values ($1, $2, 999, $3, 100, $4)`,
        [rows[0].id, at, qty, qty * 100],
      );
    }
    await rollup({ from: '2026-11-20', to: '2026-11-21' });
    const { rows } = await h.admin.query(
      `select date::text, qty_sold::int, order_count from analytics.daily_sales_agg where product_tmpl_id = 999 ` +
        `order by date`,
    );
    expect(rows).toEqual([
      { date: '2026-11-20', qty_sold: 3, order_count: 1 },
      { date: '2026-11-21', qty_sold: 5, order_count: 1 },
    ]);
    const { agg, direct } = await compare('2026-11-20', '2026-11-21');
    expect(agg).toEqual(direct);
  });

  it('a cancelled order disappears from the aggregate on the next run', async () => {
    await h.admin.query(
      `update sales.sale_order set state = 'cancel' where id = (select order_id from sales.sale_order_line where ` +
        `product_tmpl_id = 999 and qty = 5)`,
    );
    const r = await rollup({ now: '2026-11-21T19:00:00Z', lookbackDays: 0 });
    expect(r).toMatchObject({ from: '2026-11-21', to: '2026-11-21', deleted: 1 });
    const { rows } = await h.admin.query(
      `select date::text from analytics.daily_sales_agg where product_tmpl_id = 999`,
    );
    expect(rows).toEqual([{ date: '2026-11-20' }]);
    const { agg, direct } = await compare('2026-09-01', '2026-11-24');
    expect(agg).toEqual(direct);
  });

  it('days filled by another session while a first fill runs are upserted instead, and come out right', async () => {
    const [from, to] = ['2026-09-01', '2026-09-10'];
    await h.admin.query('delete from analytics.daily_sales_agg where date between $1 and $2', [from, to]);
    const key = (await compare(from, to)).direct[0]!;
    // Another writer's row for one of those days, not yet committed: the job sees the days
    // empty, and its plain insert waits on that row's key.
    const other = await h.admin.connect();
    await other.query('begin');
    await other.query(
      `insert into analytics.daily_sales_agg (date, company_id, product_tmpl_id, channel, qty_sold, revenue,
         order_count, refund_qty, refund_amount) values ($1, $2, $3, $4, 0, 0, 0, 0, 0)`,
      [key.date, key.company_id, key.product_tmpl_id, key.channel],
    );
    const { job } = await rt.queues.enqueue('daily-sales-rollup', { from, to });
    await waitUntilBlocked(h.admin, `wait_event = 'transactionid'`, 'the first fill to wait on the key');
    await other.query('commit');
    other.release();
    const { state, job: done } = await waitForFinished(rt.queues.get('daily-sales-rollup'), job.id!);
    expect(state).toBe('completed');
    const { logs } = await rt.queues.get('daily-sales-rollup').getJobLogs(job.id!);
    expect(logs.join('\n')).toMatch(/filled meanwhile by another run; upserting instead/);
    const { agg, direct } = await compare(from, to);
    expect(agg).toEqual(direct);
    expect((done.returnvalue as DailySalesRollupResult).upserted).toBe(direct.length);
  });

  it('refuses a backfill with only one end, or backwards, naming the field', async () => {
    await expect(rt.queues.enqueue('daily-sales-rollup', { from: '2026-11-01' })).rejects.toThrow(
      /to: from and to go together/,
    );
    await expect(rt.queues.enqueue('daily-sales-rollup', { from: '2026-11-05', to: '2026-11-01' })).rejects.toThrow(
      /to: must not be before from/,
    );
    await expect(rt.queues.enqueue('daily-sales-rollup', { from: '2026-02-30', to: '2026-03-01' })).rejects.toThrow(
      /from: is not a valid date/,
    );
  });
});
