// index-report on real PostgreSQL: a planted duplicate, a prefix, an unused index and a
// foreign key without an index are found; the scanned and constraint indexes are not
// called unused; nothing is dropped; the findings reach /metrics.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IndexReportResult } from '../../jobs/index-report.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { ensureJournal } from '../../src/partitions/retention-journal.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { Metrics } from '../../src/monitoring/metrics.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('index_report');
  await h.admin.query(`
    create schema shop;
    create table shop.customer (id int primary key, email text unique, region int);
    create table shop.orders (id int primary key, customer_id int not null references shop.customer (id),
      placed date not null, amount numeric);
    create index orders_placed on shop.orders (placed);
    create index orders_placed_again on shop.orders (placed);
    create index orders_placed_amount on shop.orders (placed, amount);
    create index orders_amount on shop.orders (amount);
    create table shop.line (order_id int references shop.orders (id), n int);
    create index line_order on shop.line (order_id, n);
    insert into shop.customer select g, 'c' || g || '@x', g % 7 from generate_series(1, 1000) g;
    insert into shop.orders select g, 1 + g % 1000, date '2026-01-01' + g % 300, g from generate_series(1, 5000) g;`);
  // One index read, so it is not "unused"; statistics flushed for the report to see.
  const c = await h.admin.connect();
  try {
    await c.query(`set enable_seqscan = off; set enable_bitmapscan = off`);
    await c.query(`select * from shop.orders where placed = date '2026-02-01'`);
    await c.query('select pg_stat_force_next_flush()');
  } finally {
    c.release();
  }
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['index-report']);
});
afterAll(() => h.close());

describe('index-report', () => {
  it('finds the duplicate, the prefix, the unused index and the unindexed foreign key; drops nothing', async () => {
    const indexesBefore = (await h.admin.query(`select count(*)::int as n from pg_indexes where schemaname = 'shop'`))
      .rows[0].n;
    const { job } = await rt.queues.enqueue('index-report', { schemas: ['shop'] });
    const done = await waitForFinished(rt.queues.get('index-report'), job.id!);
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as IndexReportResult;

    expect(r.overlapping).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          index: 'shop.orders_placed_again',
          coveredBy: 'shop.orders_placed',
          kind: 'duplicate',
        }),
        expect.objectContaining({
          index: 'shop.orders_placed',
          coveredBy: 'shop.orders_placed_amount',
          kind: 'prefix',
        }),
      ]),
    );
    // The equal pair is reported once; a longer index is never "covered" by a shorter one.
    expect(r.overlapping.filter((o) => o.index === 'shop.orders_placed' && o.kind === 'duplicate')).toEqual([]);
    expect(r.overlapping.some((o) => o.index === 'shop.orders_placed_amount')).toBe(false);

    const unused = r.unused.map((u) => u.index);
    expect(unused).toContain('shop.orders_amount');
    // Whichever index the planner read is not unused.
    const { rows: read } = await h.admin.query(
      `select schemaname || '.' || indexrelname as index from pg_stat_user_indexes where idx_scan > 0 and ` +
        `schemaname = 'shop'`,
    );
    expect(read.length).toBeGreaterThan(0);
    for (const { index } of read) expect(unused).not.toContain(index);
    expect(unused).not.toContain('shop.orders_pkey'); // it enforces the key
    expect(unused).not.toContain('shop.customer_email_key');
    expect(r.unused.find((u) => u.index === 'shop.orders_amount')!.bytes).toBeGreaterThan(0);
    expect(r.warning).toMatch(/this node's/);

    expect(r.unindexedForeignKeys).toEqual([
      {
        constraint: 'orders_customer_id_fkey',
        table: 'shop.orders',
        columns: 'customer_id',
        references: 'shop.customer',
      },
    ]);
    const indexesAfter = (await h.admin.query(`select count(*)::int as n from pg_indexes where schemaname = 'shop'`))
      .rows[0].n;
    expect(indexesAfter).toBe(indexesBefore);

    await rt.history.flush();
    const metrics = await new Metrics(new HealthReader(rt)).render();
    expect(metrics.body).toMatch(/pgmaint_index_report_findings\{target="main",kind="unindexed_foreign_key"\} 1/);
    expect(metrics.body).toMatch(/pgmaint_index_report_findings\{target="main",kind="overlapping"\} [1-9]/);
    expect(metrics.body).toMatch(/pgmaint_index_report_findings\{target="main",kind="unused"\} [1-9]/);
  });

  it("leaves pgmaint's own tables (schema pgmaint) out of the findings unless schemas names it", async () => {
    // pgmaint's tables on this target: the run history (migrated above) and the retention journal.
    await ensureJournal(h.admin);
    const report = async (payload: object) => {
      const { job } = await rt.queues.enqueue('index-report', payload);
      const done = await waitForFinished(rt.queues.get('index-report'), job.id!);
      expect(done.state, done.job.failedReason).toBe('completed');
      const r = done.job.returnvalue as IndexReportResult;
      return [...r.unused.map((u) => u.index), ...r.overlapping.map((o) => o.index)].concat(
        r.unindexedForeignKeys.map((f) => f.table),
      );
    };
    const everything = await report({});
    expect(everything).toContain('shop.orders_amount');
    expect(everything.filter((x) => x.startsWith('pgmaint.'))).toEqual([]);
    // Asked for by name, the schema is reported like any other: its never-read index is there.
    expect(await report({ schemas: ['pgmaint'] })).toContain('pgmaint.retention_journal_open');
  });

  it("gives its session back to the worker's pool without its 5 min statement_timeout", async () => {
    const { job } = await rt.queues.enqueue('index-report', { schemas: ['shop'] });
    const done = await waitForFinished(rt.queues.get('index-report'), job.id!);
    expect(done.state, done.job.failedReason).toBe('completed');
    // Every session the jobs' pool holds, the report's among them, taken at once.
    const pool = rt.connections.pool('main');
    expect(pool.idleCount).toBeGreaterThan(0);
    const sessions = await Promise.all(Array.from({ length: pool.idleCount }, () => pool.connect()));
    try {
      for (const c of sessions) {
        const { rows } = await c.query<{ v: string }>(`select current_setting('statement_timeout') as v`);
        expect(rows[0]!.v).not.toBe('5min');
      }
    } finally {
      for (const c of sessions) c.release();
    }
  });
});
