// vacuum-analyze on real statistics: a table after mass deletes is chosen and an
// untouched one is not; a partitioned parent is analyzed; the time budget stops the
// run cleanly; a table whose lock is held is skipped.
import type pg from 'pg';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import type { VacuumAnalyzeResult } from '../../jobs/vacuum-analyze.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, waitUntilBlocked, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('vacuum');
  // Autovacuum off on these tables so that only the job touches them. One session,
  // its statistics flushed before the next step (they reach shared memory only
  // when the session goes idle, at most once a second, unless forced).
  const c = await h.admin.connect();
  try {
    await c.query(`create schema farm;
      create table farm.churn (id int primary key, note text) with (autovacuum_enabled = off);
      create table farm.quiet (id int primary key, note text) with (autovacuum_enabled = off);
      insert into farm.churn select g, repeat('x', 50) from generate_series(1, 60000) g;
      insert into farm.quiet select g, repeat('x', 50) from generate_series(1, 60000) g;
      create table farm.reading (animal_id int, at date not null, liters numeric) partition by range (at);
      create table farm.reading_2026 partition of farm.reading for values from ('2026-01-01') to ('2027-01-01') with
        (autovacuum_enabled = off);
      insert into farm.reading select g % 75, date '2026-01-01' + g % 300, 10 from generate_series(1, 20000) g`);
    await c.query('select pg_stat_force_next_flush()');
    await c.query('vacuum analyze farm.churn, farm.quiet, farm.reading_2026');
    await c.query('delete from farm.churn where id % 2 = 0');
    await c.query('select pg_stat_force_next_flush()');
  } finally {
    c.release();
  }
  await waitUntil(
    async () =>
      (await h.admin.query(`select n_dead_tup from pg_stat_user_tables where relname = 'churn'`)).rows[0].n_dead_tup >=
      30000,
    15_000,
    'dead tuples in the statistics',
  );
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['vacuum-analyze']);
});
afterAll(() => h.close());

async function run(payload: object) {
  const { job } = await rt.queues.enqueue('vacuum-analyze', { schemas: ['farm'], ...payload });
  const { state, job: done } = await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!);
  expect(done.failedReason).toBeUndefined();
  expect(state).toBe('completed');
  return done.returnvalue as VacuumAnalyzeResult;
}

describe('vacuum-analyze', () => {
  it(
    'dry run: chooses the table after mass deletes and the never-analyzed parent, not the untouched ' + 'table',
    async () => {
      const r = await run({ dryRun: true });
      assert('dryRun' in r, 'not a dry run');
      const chosen = r.chosen;
      expect(chosen.map((c) => c.table).sort()).toEqual(['farm.churn', 'farm.reading']);
      expect(chosen.find((c) => c.table === 'farm.churn')).toMatchObject({
        action: 'VACUUM ANALYZE',
        reasons: [expect.stringMatching(/^30000 dead tuples \(50\.0 % of the table\)/), expect.any(String)],
      });
      expect(chosen.find((c) => c.table === 'farm.reading')).toMatchObject({
        action: 'ANALYZE',
        reasons: ['partitioned parent never analyzed (autovacuum never analyzes parents)'],
      });
      const { rows } = await h.admin.query(`select n_dead_tup from pg_stat_user_tables where relname = 'churn'`);
      expect(Number(rows[0].n_dead_tup)).toBe(30000);
    },
  );

  it('skips a table whose lock is held, under lock_timeout', async () => {
    const holder: pg.PoolClient = await h.admin.connect();
    await holder.query('begin; lock table farm.churn in share update exclusive mode');
    try {
      const r = await run({ lockTimeout: '300ms' });
      assert('tables' in r, 'a dry run');
      expect(r.tables.find((t) => t.table === 'farm.churn')).toMatchObject({
        skipped: 'lock not available within 300ms (lock_timeout)',
      });
      // The other table went ahead.
      expect(r.tables.find((t) => t.table === 'farm.reading')?.skipped).toBeUndefined();
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  });

  it('vacuums the churned table (dead tuples 30000 → 0) and has analyzed the partitioned parent', async () => {
    const r = await run({});
    assert('tables' in r, 'a dry run');
    expect(r.tables.map((t) => t.table)).toEqual(['farm.churn']); // the parent was analyzed by the previous run
    expect(r.tables[0]).toMatchObject({ action: 'VACUUM ANALYZE', deadBefore: 30000, deadAfter: 0 });
    // Throttled by default by the governor (stricter than autovacuum's 2 ms, no parallel workers):
    // the session's settings as the server took them.
    expect(r.throttle).toEqual({ costDelay: '10ms', costLimit: 200, maxParallelMaintenanceWorkers: 0 });
    const { rows } = await h.admin.query(
      `select count(*)::int as n from pg_stats where schemaname = 'farm' and tablename = 'reading' and inherited`,
    );
    expect(rows[0].n).toBeGreaterThan(0);
    // The job's own setting rules once the governor is off.
    const again = await run({ costDelayMs: 0, governor: { enabled: false } });
    assert('tables' in again, 'a dry run');
    expect(again.tables).toEqual([]);
    expect(again.throttle).toMatchObject({ costDelay: '0', costLimit: 200 });
  });

  it('stops at the time budget and reports what is left', async () => {
    const c = await h.admin.connect();
    try {
      for (const t of ['a', 'b', 'c']) {
        await c.query(`create table farm.slow_${t} (id int, note text) with (autovacuum_enabled = off);
          insert into farm.slow_${t} select g, repeat('y', 100) from generate_series(1, 40000) g; delete from
            farm.slow_${t} where id % 3 = 0`);
      }
      await c.query('select pg_stat_force_next_flush()');
    } finally {
      c.release();
    }
    await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select count(*)::int as n from pg_stat_user_tables where relname like 'slow_%' and n_dead_tup > 10000`,
          )
        ).rows[0].n === 3,
      15_000,
      'dead tuples of the slow tables',
    );
    // Throttled to a crawl, the first table cannot finish in 2 s.
    const t0 = Date.now();
    const r = await run({ budgetSeconds: 2, costDelayMs: 100, costLimit: 1 });
    assert('tables' in r, 'a dry run');
    expect(Date.now() - t0).toBeLessThan(60_000);
    expect(r.stoppedAtBudget).toBe(true);
    expect(r.tables).toHaveLength(1);
    expect(r.tables[0]!.skipped).toBe('cancelled at the end of the 2 s budget');
    expect(r.left).toHaveLength(2);
  });

  it('VACUUM FULL only for a table named in the payload; unknown names are refused', async () => {
    const { job } = await rt.queues.enqueue('vacuum-analyze', { schemas: ['farm'], vacuumFull: ['farm.nope'] });
    const { state, job: done } = await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!);
    expect(state).toBe('failed');
    expect(done.failedReason).toMatch(/^PERMANENT: vacuumFull: farm\.nope is not a table of this database/);
    const r = await run({ vacuumFull: ['farm.quiet'], dryRun: true });
    assert('dryRun' in r, 'not a dry run');
    expect(r.chosen).toContainEqual(expect.objectContaining({ table: 'farm.quiet', action: 'VACUUM FULL ANALYZE' }));
  });

  it('commits consecutive ANALYZEs together; one whose lock is not granted is skipped alone', async () => {
    const c = await h.admin.connect();
    const mods = async (n: number) => {
      // Rows changed since the last analyze decide the order: lab.a, lab.b, lab.c.
      for (const [t, rows] of [
        ['a', 7000],
        ['b', 6000],
        ['c', 5000],
      ] as const)
        await c.query(`insert into lab.${t} select g, g from generate_series(1, ${rows * n}) g`);
      await c.query('select pg_stat_force_next_flush()');
      await waitUntil(
        async () =>
          (
            await h.admin.query(
              `select count(*)::int as n from pg_stat_user_tables where schemaname = 'lab' and ` +
                `n_mod_since_analyze >= 5000`,
            )
          ).rows[0].n === 3,
        15_000,
        'rows changed in the lab tables',
      );
    };
    const analyzed = async () =>
      (
        await h.admin.query(
          `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'lab' and exists (select from pg_statistic s where s.starelid = c.oid) order by 1`,
        )
      ).rows.map((r) => r.relname);
    const holder: pg.PoolClient = await h.admin.connect();
    try {
      await c.query(`create schema lab;
        create table lab.a (id int, v int) with (autovacuum_enabled = off);
        create table lab.b (id int, v int) with (autovacuum_enabled = off);
        create table lab.c (id int, v int) with (autovacuum_enabled = off)`);
      await mods(1);
      // The last table waits for its lock: the first two are analyzed but not yet committed.
      await holder.query('begin; lock table lab.c in share update exclusive mode');
      const { job } = await rt.queues.enqueue('vacuum-analyze', { schemas: ['lab'], lockTimeout: '30s' });
      await waitUntilBlocked(h.admin, `query like 'analyze "lab"."c"%'`, 'the ANALYZE of lab.c to wait for its lock');
      expect(await analyzed()).toEqual([]);
      await holder.query('rollback');
      expect((await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!)).state).toBe('completed');
      expect(await analyzed()).toEqual(['a', 'b', 'c']);

      // A lock not granted in the middle of a batch takes back only its own table.
      await mods(2);
      await holder.query('begin; lock table lab.b in share update exclusive mode');
      const r = await run({ schemas: ['lab'], lockTimeout: '300ms' });
      await holder.query('rollback');
      assert('tables' in r, 'a dry run');
      expect(r.tables.map((t) => [t.table, t.skipped])).toEqual([
        ['lab.a', undefined],
        ['lab.b', 'lock not available within 300ms (lock_timeout)'],
        ['lab.c', undefined],
      ]);
      const { rows } = await h.admin.query(
        `select relname, n_mod_since_analyze::int as mods from pg_stat_user_tables where schemaname = 'lab' order by 1`,
      );
      expect(rows).toEqual([
        { relname: 'a', mods: 0 },
        { relname: 'b', mods: 12000 },
        { relname: 'c', mods: 0 },
      ]);

      // The session ended under an ANALYZE: the attempt fails with the server's reason,
      // not with what the dead session answers to the batch's commit.
      await mods(3);
      await holder.query('begin; lock table lab.b in share update exclusive mode');
      const { job: ended } = await rt.queues.enqueue('vacuum-analyze', { schemas: ['lab'], lockTimeout: '30s' });
      await waitUntilBlocked(h.admin, `query like 'analyze "lab"."b"%'`, 'the ANALYZE of lab.b to wait for its lock');
      await h.admin.query(
        `select pg_terminate_backend(pid) from pg_stat_activity where query like 'analyze "lab"."b"%' and ` +
          `pid <> pg_backend_pid()`,
      );
      await holder.query('rollback');
      const queue = rt.queues.get('vacuum-analyze');
      await waitUntil(async () => (await queue.getJob(ended.id!))?.failedReason, 15_000, 'the attempt to fail');
      expect((await queue.getJob(ended.id!))!.failedReason).toMatch(
        /terminating connection due to administrator command/,
      );
      await (await queue.getJob(ended.id!))!.remove().catch(() => undefined);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      c.release();
    }
  });
});
