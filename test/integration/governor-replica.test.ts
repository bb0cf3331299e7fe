// The load governor and a standby's replay lag (docs/governor.md): a streaming standby of
// this file's own cluster (pg_basebackup -R) has its replay paused with
// pg_wal_replay_pause(). pg_stat_replication's replay_lag does not grow then (it stays
// NULL after an idle spell): the lag is how long the replay position stands still with WAL
// beyond it. Every job that writes WAL waits before its first unit with the lag as its
// reason, and goes on once replay resumes; a job that only reads is not held.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { DAIRY_SCHEMA } from '../../src/dev/dairy.ts';
import { readGovernor } from '../../src/governor/board.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';
import { type Standby, startStandby } from '../support/standby.ts';

let h: Harness;
let rt: Runtime;
let db: pg.Pool;
let standby: Standby;

const WRITERS: [string, object][] = [
  ['create-partitions', { tables: ['lag.events'], now: '2026-01-05T12:00:00Z' }],
  ['drop-expired-partitions', { tables: ['lag.old'], now: '2026-01-05T12:00:00Z' }],
  ['vacuum-analyze', { schemas: ['lag'], thresholds: { minModTuples: 0, modRatio: 0 } }],
  // Each on a table of its own: REINDEX CONCURRENTLY, pg_repack and VACUUM of one table, released
  // together, can deadlock each other.
  ['index-maintenance', { indexes: ['lagidx.t_v'] }],
  ['repack-table', { tables: ['lagrep.rep'] }],
  ['daily-sales-rollup', { from: '2026-01-01', to: '2026-01-02' }],
];

beforeAll(async () => {
  h = await createHarness('gov_replica');
  const own = await h.ownCluster();
  db = own.pool;
  standby = await startStandby(own.pg, path.join(h.dir, 'standby'));
  await db.query(`
    create extension pg_repack;
    create extension amcheck;
    create schema lag;
    create table lag.events (ts timestamptz not null, v int) partition by range (ts);
    create table lag.old (ts timestamptz not null, v int) partition by range (ts);
    create schema lagrep;
    create table lagrep.rep (id int primary key, v text);
    insert into lagrep.rep select g, md5(g::text) from generate_series(1, 5000) g;
    create schema lagidx;
    create table lagidx.t (id int primary key, v text);
    create index t_v on lagidx.t (v);
    insert into lagidx.t select g, md5(g::text) from generate_series(1, 5000) g;`);
  for (let d = 1; d <= 5; d++)
    await db.query(
      `create table lag.old_p2026010${d} partition of lag.old for values from ('2026-01-0${d}') to ` +
        `('2026-01-0${d + 1}')`,
    );
  await db.query(DAIRY_SCHEMA);
  h.configFile({
    // Seven runs at once on one target, each holding a session while it waits.
    targets: { main: { poolSize: 12 } },
    // Each held run keeps its session while it waits: more than the default budget of 10 at once.
    connections: { budget: 24 },
    // Held runs keep their heavy-job permit of the cluster (a run waits between its units, it
    // has not ended): the read-only integrity-check must not queue behind them here.
    worker: { heavyJobsPerCluster: 8 },
    partitions: [
      { table: 'lag.events', column: 'ts', interval: 'day', premake: 2 },
      { table: 'lag.old', column: 'ts', interval: 'day', retention: '1 day', archive: false },
    ],
    governor: {
      checkEveryMs: 100,
      maxReplicaLagSeconds: 1,
      maxActive: null,
      maxLockWaits: null,
    },
    jobs: Object.fromEntries([...WRITERS.map(([j]) => j), 'integrity-check'].map((j) => [j, { attempts: 1 }])),
  });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, [...WRITERS.map(([j]) => j), 'integrity-check']);
}, 120_000);
afterAll(async () => {
  await standby?.resumeReplay().catch(() => undefined);
  await h.close();
  await standby?.stop();
});

const partitionsOf = async (table: string) =>
  Number(
    (await db.query('select count(*)::int as n from pg_inherits where inhparent = $1::regclass', [table])).rows[0].n,
  );

describe('governor: replica lag', () => {
  it('jobs writing WAL wait with the lag as reason while replay is paused, and go on once it resumes', async () => {
    await waitUntil(
      async () => (await db.query(`select 1 from pg_stat_replication where state = 'streaming'`)).rowCount,
      30_000,
      'the standby to stream',
    );
    await standby.pauseReplay();
    await db.query('create table lag.marker as select 1 as x'); // WAL the standby does not replay
    await waitUntil(
      async () =>
        (
          await db.query(
            'select 1 from pg_stat_replication where pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) > 0',
          )
        ).rowCount,
      10_000,
      'the standby to fall behind',
    );
    // replay_lag says nothing of a paused replay: it is NULL or stale here.
    const { rows } = await db.query('select extract(epoch from replay_lag)::float8 as lag from pg_stat_replication');
    expect(rows[0].lag === null || rows[0].lag < 1).toBe(true);
    // The worker's sampler has watched the standby stand still since; past the 1 s limit:
    await sleep(2000);

    const ids = new Map<string, string>();
    for (const [job, payload] of WRITERS) ids.set(job, (await rt.queues.enqueue(job, payload)).job.id!);
    // A job that only reads (amcheck) is not held by the lag.
    const check = await rt.queues.enqueue('integrity-check', { schemas: ['lag', 'lagrep', 'lagidx'], full: true });
    const checked = await waitForFinished(rt.queues.get('integrity-check'), check.job.id!, 60_000);
    expect(checked.state, checked.job.failedReason).toBe('completed');

    const prefix = rt.config.redis.prefix;
    const held = await waitUntil(
      async () => {
        const g = await readGovernor(rt.queues.connection, prefix);
        const lagged = g.held.filter((r) => r.kind === 'replica_lag');
        return lagged.length === WRITERS.length && lagged;
      },
      60_000,
      'every writing job to be held by the lag',
    );
    for (const r of held) {
      expect(r.state).toBe('throttled');
      expect(r.reason).toMatch(/^replica lag \d+(\.\d)? s > 1 s \(standby walreceiver\)$/);
      expect(r.jobId).toBe(ids.get(r.job));
    }
    // Bull Board's log says why, and nothing was done yet.
    for (const [job] of WRITERS) {
      const { logs } = await rt.queues.get(job).getJobLogs(ids.get(job)!);
      expect(logs.join('\n'), job).toMatch(
        /\[\d+%\] throttled: replica lag \d+(\.\d)? s > 1 s \(standby walreceiver\)/,
      );
      expect(await rt.queues.get(job).getJobState(ids.get(job)!)).toBe('active');
    }
    expect(await partitionsOf('lag.events')).toBe(0);
    expect(await partitionsOf('lag.old')).toBe(5);
    expect((await db.query('select count(*)::int as n from analytics.daily_sales_agg')).rows[0].n).toBe(0);
    const analyzed = await db.query(
      `select count(*)::int as n from pg_stat_user_tables where schemaname = 'lag' and last_analyze is not null`,
    );
    expect(analyzed.rows[0].n).toBe(0);

    await standby.resumeReplay();
    for (const [job] of WRITERS) {
      const done = await waitForFinished(rt.queues.get(job), ids.get(job)!, 120_000);
      expect(done.state, `${job}: ${done.job.failedReason}`).toBe('completed');
      const { logs } = await rt.queues.get(job).getJobLogs(ids.get(job)!);
      expect(logs.join('\n'), job).toMatch(/running again after \d+ s held \(throttled: replica lag/);
    }
    expect(await partitionsOf('lag.events')).toBeGreaterThan(0);
    expect(await partitionsOf('lag.old')).toBe(2);
    const repack = (await rt.queues.get('repack-table').getJob(ids.get('repack-table')!))!.returnvalue;
    expect(repack.repacked).toHaveLength(1);
    const reindex = (await rt.queues.get('index-maintenance').getJob(ids.get('index-maintenance')!))!.returnvalue;
    expect(reindex.rebuilt).toHaveLength(1);
    expect((await readGovernor(rt.queues.connection, prefix)).held).toEqual([]);
    // The seconds held are counted by job and reason (/metrics).
    const counted = (await readGovernor(rt.queues.connection, prefix)).throttled;
    for (const [job] of WRITERS)
      expect(counted.find((t) => t.job === job && t.reason === 'replica_lag')?.seconds, job).toBeGreaterThan(0);
  });
});
