// repack-table on real PostgreSQL with pg_repack: a bloated table shrinks while inserts
// run, with every row kept; a missing extension is refused, naming it, and nothing
// else (never VACUUM FULL) runs instead; a table pg_repack cannot or did not repack
// is reported skipped with the reason, never repacked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RepackTableResult } from '../../jobs/repack-table.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('repack');
  await h.admin.query(`
    create table public.reading (id bigint generated always as identity primary key, sensor int, v text);
    insert into public.reading (sensor, v) select g % 100, repeat('r', 200) from generate_series(1, 150000) g;
    delete from public.reading where id % 4 <> 0;`);
  await h.admin.query('vacuum public.reading');
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['repack-table']);
});
afterAll(() => h.close());

async function run(payload: object) {
  const { job } = await rt.queues.enqueue('repack-table', payload);
  return waitForFinished(rt.queues.get('repack-table'), job.id!, 120_000);
}

describe('repack-table', () => {
  it('refuses clearly when the pg_repack extension is missing, and changes nothing', async () => {
    const before = (await h.admin.query(`select pg_total_relation_size('public.reading') as b`)).rows[0].b;
    const done = await run({ tables: ['public.reading'] });
    expect(done.state).toBe('failed');
    expect(done.job.failedReason).toMatch(/pg_repack is not installed in database .*create extension pg_repack/);
    expect(done.job.failedReason).toMatch(/VACUUM FULL is never used/);
    expect((await h.admin.query(`select pg_total_relation_size('public.reading') as b`)).rows[0].b).toBe(before);
  });

  it('shrinks a bloated table while inserts run, keeping every row', async () => {
    await h.admin.query('create extension pg_repack');
    const before = Number((await h.admin.query('select count(*) from public.reading')).rows[0].count);
    let stop = false;
    let inserted = 0;
    const writer = (async () => {
      while (!stop) {
        await h.admin.query(`insert into public.reading (sensor, v) values (1, 'live')`);
        inserted++;
      }
    })();
    const done = await run({ tables: ['public.reading'], lockWaitSeconds: 30 });
    stop = true;
    await writer;
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as RepackTableResult;
    expect(r.repacked).toHaveLength(1);
    expect(r.repacked[0]!.bytesAfter).toBeLessThan(r.repacked[0]!.bytesBefore * 0.5);
    expect(inserted).toBeGreaterThan(5);
    expect(Number((await h.admin.query('select count(*) from public.reading')).rows[0].count)).toBe(before + inserted);
  });

  it('a worker killed mid-repack leaves a trigger that the next run removes before it repacks', async () => {
    await h.admin.query(`
      create table public.big (id bigint generated always as identity primary key, v text);
      insert into public.big (v) select repeat(md5(g::text), 8) from generate_series(1, 400000) g;
      delete from public.big where id % 2 = 0;`);
    await rt.close(); // only the spawned worker takes the job
    const worker = h.spawnPgmaint(['worker', '--queues', 'repack-table'], { LOG_LEVEL: 'warn' });
    rt = h.runtime({ schedules: [] });
    await waitUntil(async () => (await rt.queues.get('repack-table').getWorkers()).length > 0, 20_000, 'worker');
    await rt.queues.enqueue('repack-table', { tables: ['public.big'] });
    const triggered = async () =>
      (
        await h.admin.query(
          `select 1 from pg_trigger where tgrelid = 'public.big'::regclass and tgname = 'repack_trigger'`,
        )
      ).rowCount === 1;
    await waitUntil(triggered, 30_000, 'pg_repack to install its trigger');
    // The worker and its pg_repack die, and their sessions with them.
    await worker.killGroup();
    await h.admin.query(
      `select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and ` +
        `application_name = 'pg_repack'`,
    );
    await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select 1 from pg_stat_activity where datname = current_database() and application_name = 'pg_repack'`,
          )
        ).rowCount === 0,
      10_000,
      'its sessions to end',
    );
    expect(await triggered()).toBe(true);
    const rows = Number((await h.admin.query('select count(*) from public.big')).rows[0].count);

    startWorkers(rt, ['repack-table']);
    // Another request than the killed one (which waits for stalled-job recovery), so not merged with it.
    const done = await run({ tables: ['public.big'], lockWaitSeconds: 30 });
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as RepackTableResult;
    expect(r.cleaned).toEqual(['public.big']);
    expect(r.repacked.map((x) => x.table)).toEqual(['public.big']);
    expect(await triggered()).toBe(false);
    expect(Number((await h.admin.query('select count(*) from public.big')).rows[0].count)).toBe(rows);
    const logs = await h.admin.query(`select count(*)::int as n from pg_tables where schemaname = 'repack'`);
    expect(logs.rows[0].n).toBe(0);
  }, 120_000);

  const fileAndSize = async (table: string) =>
    (
      await h.admin.query(
        `select pg_relation_filenode($1::regclass) as file, pg_total_relation_size($1::regclass)::int8 as bytes`,
        [table],
      )
    ).rows[0];

  it('skips a table with no primary key or NOT NULL unique index, chosen by bloat or named, saying why', async () => {
    await h.admin.query(`
      create extension pgstattuple;
      create schema nopk;
      create table nopk.t (id int, v text);
      create unique index t_id on nopk.t (id); -- unique, but on a column that may be null
      insert into nopk.t select g, repeat('n', 200) from generate_series(1, 40000) g;
      delete from nopk.t where id % 4 <> 0;`);
    await h.admin.query('vacuum nopk.t');
    const before = await fileAndSize('nopk.t');
    const noKey = /^no primary key and no NOT NULL unique index .*: pg_repack cannot repack a table without one$/;
    for (const payload of [{ minBytes: 1_000_000, lockWaitSeconds: 30 }, { tables: ['nopk.t'] }]) {
      const done = await run(payload);
      expect(done.state, done.job.failedReason).toBe('completed');
      const r = done.job.returnvalue as RepackTableResult;
      expect(r.candidates.map((c) => c.table)).toContain('nopk.t');
      expect(r.repacked.map((x) => x.table)).not.toContain('nopk.t');
      expect(r.skipped).toContainEqual({ table: 'nopk.t', reason: expect.stringMatching(noKey) });
      const logs = await rt.queues.get('repack-table').getJobLogs(done.job.id!);
      expect(logs.logs.join('\n')).not.toMatch(/repacked nopk\.t/);
    }
    expect(await fileAndSize('nopk.t')).toEqual(before);
  }, 120_000);

  it('a table pg_repack gives up on with a warning and exit status 0 is skipped with its words', async () => {
    const holder = await h.admin.connect();
    try {
      // A reader that stays: pg_repack's exclusive lock waits lockWaitSeconds, then it gives up on the
      // table without cancelling the reader (--no-kill-backend).
      await holder.query('begin; select count(*) from public.reading');
      const before = await fileAndSize('public.reading');
      const done = await run({ tables: ['public.reading'], lockWaitSeconds: 1 });
      expect(done.state, done.job.failedReason).toBe('completed');
      const r = done.job.returnvalue as RepackTableResult;
      expect(r.repacked).toEqual([]);
      expect(r.bytesFreed).toBe(0);
      expect(r.skipped).toEqual([
        { table: 'public.reading', reason: expect.stringMatching(/^pg_repack did not repack it: .*timed out/) },
      ]);
      expect(await fileAndSize('public.reading')).toEqual(before);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  }, 120_000);
});
