// index-maintenance on real PostgreSQL: a bloated index is rebuilt and shrinks; an
// invalid index from a failed CREATE INDEX CONCURRENTLY is rebuilt; inserts from another
// session go on during a rebuild; a worker killed mid-rebuild leaves leftovers that the
// next run cleans; an open writer makes a rebuild skipped, not the run failed, and the
// leftover it could not drop shows in /metrics until the next run drops it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IndexMaintenanceResult } from '../../jobs/index-maintenance.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { Metrics } from '../../src/monitoring/metrics.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('index_maint');
  await h.admin.query(`
    create extension pgstattuple;
    create schema care;
    create table care.bloated (id int primary key, v text);
    insert into care.bloated select g, md5(g::text) from generate_series(1, 100000) g;
    create index bloated_v on care.bloated (v);
    create table care.big (id bigint generated always as identity primary key, v text);
    insert into care.big (v) select md5(g::text) || md5((g * 7)::text) from generate_series(1, 600000) g;
    create index big_v on care.big (v);
    create table care.dupes (x int);
    insert into care.dupes values (1), (1), (2);`);
  // Mass update and delete: the index keeps the dead entries' space after vacuum.
  await h.admin.query(`update care.bloated set v = md5(v) where id % 10 <> 0`);
  await h.admin.query(`delete from care.bloated where id % 3 = 0`);
  await h.admin.query(`vacuum care.bloated`);
  // A unique CREATE INDEX CONCURRENTLY that fails on the duplicates leaves an invalid index.
  await h.admin.query(`create unique index concurrently dupes_x on care.dupes (x)`).catch(() => undefined);
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['index-maintenance']);
});
afterAll(() => h.close());

async function run(payload: object) {
  const { job } = await rt.queues.enqueue('index-maintenance', payload);
  const done = await waitForFinished(rt.queues.get('index-maintenance'), job.id!, 120_000);
  expect(done.state, done.job.failedReason).toBe('completed');
  return done.job.returnvalue as IndexMaintenanceResult;
}

const valid = async (index: string) =>
  (await h.admin.query(`select indisvalid as v from pg_index where indexrelid = $1::regclass`, [index])).rows[0]?.v;
const leftovers = async () =>
  (await h.admin.query(`select relname from pg_class where relname ~ '_cc(new|old)[0-9]*$'`)).rows.map(
    (r) => r.relname,
  );

/** The backend rebuilding care.big's index, once its REINDEX CONCURRENTLY has started. */
const rebuildOfBigStarted = () =>
  waitUntil(
    async () =>
      (
        await h.admin.query(
          `select pid from pg_stat_progress_create_index where relid = 'care.big'::regclass and command like ` +
            `'REINDEX CONCURRENTLY'`,
        )
      ).rows[0]?.pid as number | undefined,
    30_000,
    'the rebuild to start',
  );

describe('index-maintenance', () => {
  it('a dry run chooses the bloated and the invalid index and changes nothing', async () => {
    expect(await valid('care.dupes_x')).toBe(false);
    const r = await run({ schemas: ['care'], minBytes: 0, dryRun: true });
    expect(r.bloatMethod).toBe('pgstatindex');
    const chosen = r.candidates.map((c) => c.index);
    expect(chosen).toEqual(expect.arrayContaining(['care.bloated_v', 'care.dupes_x']));
    expect(chosen).not.toContain('care.big_v'); // freshly built
    expect(r.candidates.find((c) => c.index === 'care.bloated_v')!.bloatPercent).toBeGreaterThanOrEqual(30);
    expect(r.rebuilt).toEqual([]);
    expect(await valid('care.dupes_x')).toBe(false);
  });

  it('rebuilds the bloated index, which shrinks, and the invalid one, which becomes valid', async () => {
    await h.admin.query(`delete from care.dupes where ctid = (select min(ctid) from care.dupes where x = 1)`);
    const r = await run({ schemas: ['care'], minBytes: 0 });
    const bloated = r.rebuilt.find((x) => x.index === 'care.bloated_v')!;
    expect(bloated.bytesAfter).toBeLessThan(bloated.bytesBefore * 0.8);
    expect(r.rebuilt.map((x) => x.index)).toContain('care.dupes_x');
    expect(await valid('care.dupes_x')).toBe(true);
    expect(await valid('care.bloated_v')).toBe(true);
    expect(await leftovers()).toEqual([]);
    // Nothing left to do: a second run chooses nothing.
    expect((await run({ schemas: ['care'], minBytes: 0 })).candidates).toEqual([]);
  });

  it('skips a table another maintenance command holds, giving the reason', async () => {
    const holder = await h.admin.connect();
    try {
      await holder.query('begin; lock table care.bloated in share update exclusive mode');
      const r = await run({ indexes: ['care.bloated_v'] });
      expect(r.rebuilt).toEqual([]);
      expect(r.skipped).toEqual([
        {
          index: 'care.bloated_v',
          reason: expect.stringMatching(
            /^another maintenance command holds the table \(pid \d+, ShareUpdateExclusiveLock\)$/,
          ),
        },
      ]);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  });

  it('inserts from another session keep succeeding during a rebuild, with the right row count after', async () => {
    const before = Number((await h.admin.query('select count(*) from care.big')).rows[0].count);
    let stop = false;
    let inserted = 0;
    const writer = (async () => {
      while (!stop) {
        await h.admin.query(`insert into care.big (v) values (md5(random()::text))`);
        inserted++;
      }
    })();
    const r = await run({ indexes: ['care.big_v'] });
    stop = true;
    await writer;
    expect(r.rebuilt.map((x) => x.index)).toEqual(['care.big_v']);
    expect(inserted).toBeGreaterThan(10);
    expect(Number((await h.admin.query('select count(*) from care.big')).rows[0].count)).toBe(before + inserted);
    const viaIndex = await h.admin.query(
      `set enable_seqscan = off; select count(*) from care.big where v >= ''; reset enable_seqscan`,
    );
    expect(Number((viaIndex as unknown as { rows: { count: string }[] }[])[1]!.rows[0]!.count)).toBe(before + inserted);
  });

  it('a session ended mid-rebuild: the attempt fails with the server reason, and the next run cleans up', async () => {
    const queue = rt.queues.get('index-maintenance');
    const { job } = await rt.queues.enqueue('index-maintenance', { indexes: ['care.big_v'], minBytes: 0 });
    const pid = await rebuildOfBigStarted();
    await h.admin.query('select pg_terminate_backend($1)', [pid]);
    await waitUntil(async () => (await queue.getJob(job.id!))?.failedReason, 15_000, 'the attempt to fail');
    // Not what the dead session answers to the cleanup that follows.
    expect((await queue.getJob(job.id!))!.failedReason).toMatch(/terminating connection due to administrator command/);
    await (await queue.getJob(job.id!))?.remove().catch(() => undefined);
    const r = await run({ indexes: ['care.big_v'], minBytes: 0 });
    expect(r.rebuilt.map((x) => x.index)).toEqual(['care.big_v']);
    expect(await leftovers()).toEqual([]);
    expect(await valid('care.big_v')).toBe(true);
  }, 120_000);

  it('a worker killed mid-rebuild leaves leftovers that the next run cleans', async () => {
    const worker = h.spawnPgmaint(['worker', '--queues', 'index-maintenance'], { LOG_LEVEL: 'warn' });
    const spare = await rt.queues.get('index-maintenance').getWorkers();
    expect(spare.length).toBeGreaterThan(0);
    // Only the spawned worker may take the job: pause this process's worker meanwhile.
    await rt.close();
    rt = h.runtime({ schedules: [] });
    await waitUntil(async () => (await rt.queues.get('index-maintenance').getWorkers()).length > 0, 20_000, 'worker');
    await rt.queues.enqueue('index-maintenance', { indexes: ['care.big_v'] });
    const pid = await rebuildOfBigStarted();
    // The worker dies, and its session with it (as with a lost machine).
    await worker.killGroup();
    await h.admin.query('select pg_terminate_backend($1)', [pid]);
    await waitUntil(async () => (await leftovers()).length > 0, 10_000, 'an invalid leftover');
    const left = await leftovers();
    for (const name of left) expect(name).toMatch(/^big_v_cc(new|old)$/);

    startWorkers(rt, ['index-maintenance']);
    const { job } = await rt.queues.enqueue('index-maintenance', { indexes: ['care.big_v'], minBytes: 0 });
    const done = await waitForFinished(rt.queues.get('index-maintenance'), job.id!, 120_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as IndexMaintenanceResult;
    expect(r.cleaned.sort()).toEqual(left.map((n) => `care.${n}`).sort());
    expect(await leftovers()).toEqual([]);
    expect(await valid('care.big_v')).toBe(true);
  }, 120_000);

  it('an open writer: index skipped, the next rebuilt, the leftover kept, shown, dropped next run', async () => {
    await h.admin.query(`
      create schema blk;
      create table blk.t (id int primary key, v text);
      insert into blk.t select g, md5(g::text) from generate_series(1, 20000) g;
      create index t_v on blk.t (v);
      create table blk.u (id int primary key, v text);
      insert into blk.u select g, md5(g::text) from generate_series(1, 2000) g;
      create index u_v on blk.u (v);`);
    const gauge = async () => {
      await rt.history.flush();
      const { body } = await new Metrics(new HealthReader(rt)).render();
      return /^pgmaint_index_leftovers\{target="main"\} (\d+)$/m.exec(body)?.[1];
    };
    const writer = await h.admin.connect();
    try {
      await writer.query('begin; update blk.t set v = v where id = 1');
      // blk.t_v is the larger, so the first candidate.
      const r = await run({ indexes: ['blk.t_v', 'blk.u_v'], lockTimeout: '1s' });
      expect(r.candidates.map((c) => c.index)).toEqual(['blk.t_v', 'blk.u_v']);
      expect(r.skipped).toEqual([
        { index: 'blk.t_v', reason: 'lock_timeout (1s) waiting for the table; left as it was' },
      ]);
      expect(r.rebuilt.map((x) => x.index)).toEqual(['blk.u_v']);
      // Its invalid copy waits on the same writer: kept for the next run, and counted in /metrics.
      expect(r.kept).toEqual([{ index: 'blk.t_v_ccnew', reason: expect.stringMatching(/^lock_timeout \(1s\)/) }]);
      expect(await leftovers()).toEqual(['t_v_ccnew']);
      expect(await valid('blk.t_v_ccnew')).toBe(false);
      expect(await valid('blk.t_v')).toBe(true);
      expect(await gauge()).toBe('1');
      // A run while the writer is still open cannot drop it either: kept again, the run succeeds.
      const again = await run({ indexes: ['blk.u_v'], lockTimeout: '1s' });
      expect(again.cleaned).toEqual([]);
      expect(again.kept).toEqual([{ index: 'blk.t_v_ccnew', reason: expect.stringMatching(/^lock_timeout/) }]);
      expect(again.rebuilt.map((x) => x.index)).toEqual(['blk.u_v']);
      expect(await gauge()).toBe('1');
    } finally {
      await writer.query('commit');
      writer.release();
    }
    const next = await run({ indexes: ['blk.t_v'], lockTimeout: '1s' });
    expect(next.cleaned).toEqual(['blk.t_v_ccnew']);
    expect(next.kept).toEqual([]);
    expect(next.rebuilt.map((x) => x.index)).toEqual(['blk.t_v']);
    expect(await leftovers()).toEqual([]);
    const invalid = await h.admin.query(`select indexrelid::regclass::text from pg_index where not indisvalid`);
    expect(invalid.rows).toEqual([]);
    expect(await gauge()).toBe('0');
  }, 120_000);
});
