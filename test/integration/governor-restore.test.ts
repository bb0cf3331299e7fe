// The load governor on restore-partition (docs/governor.md): application sessions hold a
// run before its partition's restore and it completes once they end; a hold by hand
// stops the pipe into pg_restore mid-stream (the server's COPY waits in ClientRead and
// loads no more rows) and after resume the partition's rows are the ones that were dropped.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { readGovernor } from '../../src/governor/board.ts';
import { Controls } from '../../src/governor/controls.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let controls: Controls;
const sessions: pg.Client[] = [];
/** Each partition's rows (count and md5 in key order), taken before retention dropped it. */
const before = new Map<string, { n: number; md5: string }>();
/** An advisory lock that pg_restore's CREATE TABLE waits on (the event trigger below) while the test holds it. */
const HOLD_KEY = 4242;

const rowsOf = async (table: string) =>
  (
    await h.admin.query(
      `select count(*)::int n, coalesce(md5(string_agg(t::text, ',' order by t.ts, t.v)), '') md5 from ${table} t`,
    )
  ).rows[0] as { n: number; md5: string };

beforeAll(async () => {
  h = await createHarness('gov_restore');
  await h.admin.query(`create schema sales;
    create table sales.sale_order (ts timestamptz not null, v int, note text) partition by range (ts);`);
  // The first month large enough (about 10 MB of COPY text) to outlast the pipes' and socket's buffers.
  for (const [m, rows] of [
    [1, 150_000],
    [2, 100],
    [3, 100],
    [4, 100],
  ] as const) {
    const name = `sales.sale_order_p20240${m}`;
    await h.admin.query(
      `create table ${name} partition of sales.sale_order for values from ('2024-0${m}-01 00:00+00') to ` +
        `('2024-0${m + 1}-01 00:00+00')`,
    );
    await h.admin.query(
      `insert into ${name} select '2024-0${m}-01 00:00+00'::timestamptz + g * interval '1 s', g, ` +
        `repeat(md5(g::text), 2) from generate_series(1, ${rows}) g`,
    );
    before.set(name, await rowsOf(name));
  }
  await h.admin.query(`
    create function public.hold_restore() returns event_trigger language plpgsql as $$
    begin
      if current_setting('application_name') like 'pgmaint/restore-partition/%' then
        perform pg_advisory_lock_shared(${HOLD_KEY}); perform pg_advisory_unlock_shared(${HOLD_KEY});
      end if;
    end $$;
    create event trigger hold_restore on ddl_command_end when tag in ('CREATE TABLE')
      execute function public.hold_restore()`);
  h.configFile({
    partitions: [{ table: 'sales.sale_order', column: 'ts', interval: 'month', retention: '12 months' }],
    governor: { checkEveryMs: 100, maxActive: 2, maxLockWaits: null, maxReplicaLagSeconds: null },
    history: { synchronous: true },
    jobs: { 'restore-partition': { attempts: 1 } },
  });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  controls = new Controls(rt.queues.connection, rt.config.redis.prefix);
  startWorkers(rt, ['drop-expired-partitions', 'restore-partition']);
  const { job } = await rt.queues.enqueue('drop-expired-partitions', { now: '2025-03-15T00:00:00Z' });
  const dropped = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 120_000);
  expect(dropped.state, dropped.job.failedReason).toBe('completed');
  expect(await h.admin.query(`select to_regclass('sales.sale_order_p202401') as t`)).toMatchObject({
    rows: [{ t: null }],
  });
}, 180_000);
/** A session busy in pg_sleep notices its client is gone only when it next writes: its backend is ended. */
async function endSessions(): Promise<void> {
  await h.admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'app'`);
  for (const c of sessions.splice(0)) await c.end().catch(() => undefined);
}
afterEach(async () => {
  await endSessions();
  await controls.clear({ kind: 'all' });
});
afterAll(() => h.close());

const governor = () => readGovernor(rt.queues.connection, rt.config.redis.prefix);
const logsOf = async (id: string) => (await rt.queues.get('restore-partition').getJobLogs(id)).logs.join('\n');

describe('governor: restore-partition', () => {
  it('application sessions hold it before its partition; it completes once they end, the rows dropped', async () => {
    for (let i = 0; i < 3; i++) {
      const c = new pg.Client({ connectionString: h.dbUrl, application_name: 'app' });
      await c.connect();
      c.on('error', () => undefined);
      c.query('select pg_sleep(600)').catch(() => undefined);
      sessions.push(c);
    }
    const { job } = await rt.queues.enqueue('restore-partition', {
      partition: 'sales.sale_order_p202402',
      mode: 'attach',
      holdUntil: new Date(Date.now() + 86_400_000).toISOString(),
    });
    const held = await waitUntil(
      async () => (await governor()).held.find((r) => r.jobId === job.id && r.started),
      30_000,
      'the run to be held',
    );
    expect(held).toMatchObject({
      job: 'restore-partition',
      state: 'throttled',
      kind: 'active',
      reason: 'active sessions 3 > 2',
      unit: 'restore sales.sale_order_p202402',
    });
    expect(await logsOf(job.id!)).toMatch(
      /throttled: active sessions 3 > 2 \(before restore sales\.sale_order_p202402\)/,
    );
    expect((await h.admin.query(`select to_regclass('sales.sale_order_p202402') as t`)).rows[0].t).toBeNull();

    await endSessions();
    const done = await waitForFinished(rt.queues.get('restore-partition'), job.id!, 60_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect(done.job.returnvalue).toMatchObject({ table: 'sales.sale_order_p202402', mode: 'attach', rows: 100 });
    expect(await rowsOf('sales.sale_order_p202402')).toEqual(before.get('sales.sale_order_p202402'));
    expect(await logsOf(job.id!)).toMatch(/running again after \d+ s held \(throttled: active sessions/);
  });

  it('held mid-stream, no byte reaches pg_restore (its COPY waits in ClientRead); resumed, rows equal', async () => {
    const lock = new pg.Client({ connectionString: h.dbUrl });
    await lock.connect();
    await lock.query('select pg_advisory_lock($1)', [HOLD_KEY]);
    const { job } = await rt.queues.enqueue('restore-partition', {
      partition: 'sales.sale_order_p202401',
      mode: 'standalone',
    });
    const id = job.id!;
    // pg_restore has created the table and waits (the event trigger) before its COPY: the stream has begun.
    await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select 1 from pg_stat_activity where application_name like 'pgmaint/restore-partition/%' and ` +
              `wait_event = 'advisory'`,
          )
        ).rowCount,
      60_000,
      "pg_restore's CREATE TABLE to wait",
    );
    await controls.set({ kind: 'job', queue: 'restore-partition', id }, 600_000, 'by hand in a test');
    // The run's governor reads the holds every 100 ms: a second for it to see this one.
    await sleep(1000);
    await lock.query('select pg_advisory_unlock($1)', [HOLD_KEY]);
    await lock.end();

    const copyNow = async () =>
      (
        await h.admin.query<{ tuples: string; wait: string | null }>(
          `select p.tuples_processed as tuples, a.wait_event as wait from pg_stat_progress_copy p ` +
            `join pg_stat_activity a using (pid) where a.application_name like 'pgmaint/restore-partition/%'`,
        )
      ).rows[0];
    // The stream sees the hold at its next chunk (until then the COPY may wait in ClientRead on a
    // rate's turn alone): once the hold is on the board, no further byte passes.
    const inStream = await waitUntil(
      async () => (await governor()).held.find((r) => r.jobId === id && r.unit?.startsWith('pg_restore of')),
      60_000,
      'the run to be held in its stream',
    );
    expect(inStream).toMatchObject({ state: 'paused', unit: 'pg_restore of sales.sale_order_p202401' });
    const waiting = await waitUntil(
      async () => {
        const c = await copyNow();
        return c?.wait === 'ClientRead' && c;
      },
      60_000,
      "pg_restore's COPY to wait for data",
    );
    // Held, not merely slow: the COPY loads no more rows while the hold lasts, and is not done.
    await sleep(1500);
    const still = await copyNow();
    expect(still).toEqual({ tuples: waiting.tuples, wait: 'ClientRead' });
    expect(Number(waiting.tuples)).toBeLessThan(150_000);
    expect(await rt.queues.get('restore-partition').getJobState(id)).toBe('active');

    await controls.clear({ kind: 'job', queue: 'restore-partition', id });
    const done = await waitForFinished(rt.queues.get('restore-partition'), id, 120_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect(done.job.returnvalue).toMatchObject({ table: 'sales.sale_order_p202401_restored', rows: 150_000 });
    expect(await rowsOf('sales.sale_order_p202401_restored')).toEqual(before.get('sales.sale_order_p202401'));
    expect(await logsOf(id)).toMatch(
      new RegExp(
        String.raw`paused: by hand \(job restore-partition\/\d+\) until [^)]*: by hand in a test ` +
          String.raw`\(before pg_restore of sales\.sale_order_p202401\)`,
      ),
    );
    expect((await governor()).held).toEqual([]);
  });
});
