// query-stats-snapshot on real PostgreSQL with pg_stat_statements: deltas between
// snapshots, right across a statistics reset, kept in the pgmaint schema; a clear
// refusal when the extension is missing or not loaded, whatever shared_preload_libraries calls it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueryStatsSnapshotResult } from '../../jobs/query-stats-snapshot.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import type { PostgresInstance } from '../../src/dev/devstack.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('query_stats');
  await h.admin.query(`create extension pg_stat_statements;
    create table qs_probe (x int); insert into qs_probe select g from generate_series(1, 1000) g;`);
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['query-stats-snapshot']);
});
afterAll(() => h.close());

async function snapshot() {
  const { job } = await rt.queues.enqueue('query-stats-snapshot', { top: 100 });
  const done = await waitForFinished(rt.queues.get('query-stats-snapshot'), job.id!);
  return done;
}
const probe = async (n: number) => {
  for (let i = 0; i < n; i++) await h.admin.query('select count(*) from qs_probe where x > $1', [i]);
};
const probeCalls = (r: QueryStatsSnapshotResult) => r.top.find((t) => t.query.includes('qs_probe where x >'))?.calls;

describe('query-stats-snapshot', () => {
  it('stores the deltas between snapshots, and only what ran after a statistics reset', async () => {
    const first = await snapshot();
    expect(first.state, first.job.failedReason).toBe('completed');
    expect((first.job.returnvalue as QueryStatsSnapshotResult).since).toBeNull();

    await probe(5);
    const second = (await snapshot()).job.returnvalue as QueryStatsSnapshotResult;
    expect(probeCalls(second)).toBe(5);
    expect(second.statisticsReset).toBe(false);

    await probe(3);
    await h.admin.query('select pg_stat_statements_reset()');
    await probe(2);
    const third = (await snapshot()).job.returnvalue as QueryStatsSnapshotResult;
    expect(third.statisticsReset).toBe(true);
    expect(probeCalls(third)).toBe(2);
    for (const t of third.top) expect(t.calls).toBeGreaterThan(0);

    const { rows } = await h.admin.query(
      `select taken_at, calls::int, total_exec_ms > 0 as timed from pgmaint.query_stats
        where query like '%qs_probe where x >%' order by taken_at`,
    );
    expect(rows.map((r) => r.calls)).toEqual([5, 2]);
    expect(rows.every((r) => r.timed)).toBe(true);
  });

  it('refuses clearly when pg_stat_statements is not installed in the database', async () => {
    await h.admin.query('drop extension pg_stat_statements');
    const done = await snapshot();
    expect(done.state).toBe('failed');
    expect(done.job.failedReason).toMatch(/pg_stat_statements is not installed in database .*create extension/);
    expect(done.job.attemptsMade).toBe(1);
  });
});

describe('query-stats-snapshot on a cluster of its own', () => {
  let own: Harness;
  let ownRt: Runtime;
  let cluster: PostgresInstance;
  let db: pg.Pool;

  beforeAll(async () => {
    own = await createHarness('query_stats_own');
    ({ pg: cluster, pool: db } = await own.ownCluster());
    db.on('error', () => undefined); // idle clients die with the restarts below
    await db.query('create extension pg_stat_statements');
    ownRt = own.runtime({ schedules: [] });
    await ownRt.history.migrate();
    startWorkers(ownRt, ['query-stats-snapshot']);
  }, 60_000);
  afterAll(() => own.close());

  async function restartWith(libraries: string) {
    // Written as an operator writes it (ALTER SYSTEM would quote "$libdir/…"); the last line wins.
    const conf = path.join(cluster.dataDir, 'postgresql.conf');
    fs.appendFileSync(conf, `\nshared_preload_libraries = '${libraries}'\n`);
    await cluster.stop('fast');
    await cluster.start();
    expect((await db.query('show shared_preload_libraries')).rows[0].shared_preload_libraries).toBe(libraries);
  }
  async function ownSnapshot() {
    const { job } = await ownRt.queues.enqueue('query-stats-snapshot', {});
    return waitForFinished(ownRt.queues.get('query-stats-snapshot'), job.id!);
  }

  it('refuses when the module is not loaded; reads it when the setting says $libdir/pg_stat_statements', async () => {
    await restartWith('auto_explain'); // another module, not this one
    const refused = await ownSnapshot();
    expect(refused.state).toBe('failed');
    expect(refused.job.failedReason).toMatch(/pg_stat_statements is not loaded.*shared_preload_libraries/);
    expect(refused.job.attemptsMade).toBe(1);

    await restartWith('$libdir/pg_stat_statements');
    const done = await ownSnapshot();
    expect(done.state, done.job.failedReason).toBe('completed');
    expect((done.job.returnvalue as QueryStatsSnapshotResult).since).toBeNull();
  }, 60_000);
});
