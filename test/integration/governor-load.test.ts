// The load governor and the target's own load (docs/governor.md): sessions that are not
// pgmaint's, busy in pg_sleep (pgbench's clients, or plain sessions), hold a job before its
// next unit, and it goes on once they end; past a critical number the run is aborted as
// retryable, its retention journal consistent, and its retry completes; held past its
// window a run stops "deferred by load", the governor-held alert fires, /metrics and
// status say so, and the next run goes on from there.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, assert, beforeAll, describe, expect, it } from 'vitest';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import type { VacuumAnalyzeResult } from '../../jobs/vacuum-analyze.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { ALERT_RULES } from '../../src/core/config.ts';
import type { Deferral } from '../../src/core/errors.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import { readGovernor } from '../../src/governor/board.ts';
import { Controls } from '../../src/governor/controls.ts';
import { AlertMonitor } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { Metrics } from '../../src/monitoring/metrics.ts';
import { statusReport } from '../../src/monitoring/status.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
const sessions: pg.Client[] = [];
const loads: AbortController[] = [];

beforeAll(async () => {
  h = await createHarness('gov_load');
  await h.admin.query(`
    create schema load;
    create table load.a (id int primary key, v text);
    create table load.b (id int primary key, v text);
    create table load.c (id int primary key, v text);
    create schema ret;
    create table ret.days (ts timestamptz not null, v int) partition by range (ts);`);
  for (let d = 1; d <= 5; d++) {
    await h.admin.query(
      `create table ret.days_p2026010${d} partition of ret.days for values from ('2026-01-0${d} 00:00+00') to ` +
        `('2026-01-0${d + 1} 00:00+00')`,
    );
    await h.admin.query(`insert into ret.days select '2026-01-0${d} 06:00+00', g from generate_series(1, 100) g`);
  }
  h.configFile({
    partitions: [{ table: 'ret.days', column: 'ts', interval: 'day', retention: '1 day', lockTimeout: '60s' }],
    governor: {
      checkEveryMs: 100,
      maxActive: 3,
      criticalActive: 8,
      maxLockWaits: null,
      maxReplicaLagSeconds: null,
    },
    history: { synchronous: true },
    jobs: { 'drop-expired-partitions': { attempts: 3, backoffMs: 1000 }, 'vacuum-analyze': { attempts: 1 } },
  });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['vacuum-analyze', 'drop-expired-partitions']);
});
afterEach(async () => {
  await endLoad();
  // The first test drops it while its run waits.
  await h.admin.query('create table if not exists load.c (id int primary key, v text)');
  await new Controls(rt.queues.connection, rt.config.redis.prefix).clear({ kind: 'all' });
});
afterAll(() => h.close());

/** `n` sessions of the application, each in pg_sleep: active, and not pgmaint's. */
async function sleepers(n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const c = new pg.Client({ connectionString: h.dbUrl, application_name: 'app' });
    await c.connect();
    c.on('error', () => undefined);
    c.query('select pg_sleep(600)').catch(() => undefined);
    sessions.push(c);
  }
}

/** pgbench with `clients` clients, each running pg_sleep in a loop, until endLoad(). */
function pgbench(clients: number): void {
  const stop = new AbortController();
  loads.push(stop);
  const script = `${h.dir}/sleep.sql`;
  runProcess('/bin/sh', ['-c', `printf 'select pg_sleep(0.5);\\n' > ${script}`])
    .then(() =>
      runProcess(binPath('pgbench'), ['-n', '-c', String(clients), '-j', '1', '-T', '600', '-f', script, h.dbUrl], {
        signal: stop.signal,
      }),
    )
    .catch(() => undefined);
}

async function endLoad(): Promise<void> {
  for (const stop of loads.splice(0)) stop.abort();
  await h.admin.query(
    `select pg_terminate_backend(pid) from pg_stat_activity where application_name in ('app', 'pgbench')`,
  );
  for (const c of sessions.splice(0)) await c.end().catch(() => undefined);
}

const activeApp = async () =>
  Number(
    (
      await h.admin.query(
        `select count(*)::int as n from pg_stat_activity where application_name in ('app', 'pgbench') and state = ` +
          `'active'`,
      )
    ).rows[0].n,
  );

const governor = () => readGovernor(rt.queues.connection, rt.config.redis.prefix);
const logsOf = async (queue: string, id: string) => (await rt.queues.get(queue).getJobLogs(id)).logs.join('\n');

describe('governor: load on the target', () => {
  it("pgbench's sessions in pg_sleep hold vacuum-analyze before its next table; ending them releases it", async () => {
    pgbench(5);
    await waitUntil(async () => (await activeApp()) >= 4, 30_000, "pgbench's sessions to be active");
    const { job } = await rt.queues.enqueue('vacuum-analyze', {
      schemas: ['load'],
      thresholds: { minModTuples: 0, modRatio: 0 },
    });
    const held = await waitUntil(
      async () => (await governor()).held.find((r) => r.jobId === job.id && r.job === 'vacuum-analyze'),
      30_000,
      'the run to be held',
    );
    expect(held).toMatchObject({ state: 'throttled', kind: 'active', started: true, target: 'main' });
    expect(held.reason).toMatch(/^active sessions [4-9] > 3$/);
    expect(held.unit).toMatch(/^ANALYZE load\.[abc]$/);
    expect(await logsOf('vacuum-analyze', job.id!)).toMatch(/\[0%\] throttled: active sessions [4-9] > 3 \(before/);
    // Nothing ran while it waited; a table dropped meanwhile is skipped, not a failure.
    await h.admin.query('drop table load.c');
    const analyzed = await h.admin.query(
      `select count(*)::int as n from pg_stat_user_tables where schemaname = 'load' and last_analyze is not null`,
    );
    expect(analyzed.rows[0].n, await logsOf('vacuum-analyze', job.id!)).toBe(0);
    expect(await rt.queues.get('vacuum-analyze').getJobState(job.id!)).toBe('active');

    await endLoad();
    const done = await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!);
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as VacuumAnalyzeResult;
    assert('tables' in r, 'a dry run');
    expect(r.tables.find((t) => t.table === 'load.c')?.skipped).toBe('dropped since it was chosen');
    expect(r.tables.filter((t) => !t.skipped).map((t) => t.table)).toEqual(
      expect.arrayContaining(['load.a', 'load.b']),
    );
    expect(r.tables).toHaveLength(3);
    expect(r).not.toHaveProperty('deferred');
    expect(await logsOf('vacuum-analyze', job.id!)).toMatch(/running again after \d+ s held \(throttled: active/);
    expect((await governor()).held).toEqual([]);
  });

  it('a critical number of sessions aborts the run as retryable, journal consistent; the retry completes', async () => {
    // The first detach waits on this lock: the run is then inside its first unit.
    const lock = new pg.Client({ connectionString: h.dbUrl });
    await lock.connect();
    // SHARE: it conflicts with the detach's SHARE UPDATE EXCLUSIVE, not with the catalog reads before it.
    await lock.query('begin; lock table ret.days_p20260101 in share mode');
    const { job } = await rt.queues.enqueue('drop-expired-partitions', { now: '2026-01-05T12:00:00Z' });
    await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select 1 from pg_stat_activity where application_name = 'pgmaint' and wait_event_type = 'Lock' and ` +
              `query ilike '%detach partition%'`,
          )
        ).rowCount,
      30_000,
      'the first detach to wait',
    );
    await sleepers(5);
    // The run's governor reads every 100 ms: a second for it to see them, before the lock goes.
    await sleep(1000);
    await lock.query('commit');
    await lock.end();
    // Between its first and second partition the run waits for the five sessions (3 at most).
    const held = await waitUntil(
      async () => (await governor()).held.find((r) => r.job === 'drop-expired-partitions' && r.kind === 'active'),
      30_000,
      'the run to be held by the load',
    );
    expect(held.unit).toBe('detach ret.days_p20260102');
    // By hand too: its retry waits for `resume`, not for a race with the load's end.
    const controls = new Controls(rt.queues.connection, rt.config.redis.prefix);
    await controls.set({ kind: 'job', queue: 'drop-expired-partitions', id: job.id! }, 600_000, 'test');
    await sleepers(4); // 9 > criticalActive 8

    const attempt = await waitUntil(
      async () => {
        const rows = await rt.history.list({ job: 'drop-expired-partitions', limit: 5 });
        return rows.find((x) => x.job_id === job.id && x.outcome === 'retrying');
      },
      30_000,
      'the aborted attempt in the run history',
    );
    expect(attempt.error).toMatch(/^aborted by the load governor at a critical threshold: active sessions 9 > 8$/);
    expect(await logsOf('drop-expired-partitions', job.id!)).toMatch(/aborted: active sessions 9 > 8 \(critical\)/);
    // Nothing half-done: the detached partition is a whole table under its open journal entry; the rest are attached.
    const journal = await h.admin.query(
      `select partition_name, state from pgmaint.retention_journal where parent = 'ret.days' and state in ` +
        `('detaching', 'detached', 'archived') order by 1`,
    );
    expect(journal.rows).toEqual([{ partition_name: 'days_p20260101', state: 'detached' }]);
    expect((await h.admin.query('select count(*)::int as n from ret.days_p20260101')).rows[0].n).toBe(100);
    const attached = await h.admin.query(
      `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = ` +
        `'ret.days'::regclass order by 1`,
    );
    expect(attached.rows.map((r) => r.relname)).toEqual([
      'days_p20260102',
      'days_p20260103',
      'days_p20260104',
      'days_p20260105',
    ]);
    // The retry waits for the hold; the load ends, the hold too, and the retry finishes the work.
    expect(['delayed', 'waiting']).toContain(await rt.queues.get('drop-expired-partitions').getJobState(job.id!));
    await endLoad();
    await controls.clear({ kind: 'job', queue: 'drop-expired-partitions', id: job.id! });
    const done = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 60_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect(done.job.attemptsMade).toBe(2);
    const policy = (done.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    expect(policy.dropped).toEqual(['ret.days_p20260101', 'ret.days_p20260102', 'ret.days_p20260103']);
    expect(policy.archives.map((a) => a.rows)).toEqual([100, 100, 100]);
    const open = await h.admin.query(
      `select count(*)::int as n from pgmaint.retention_journal where state in ('detaching', 'detached', 'archived')`,
    );
    expect(open.rows[0].n).toBe(0);
  });

  it('held past its window a run stops deferred by load; the alert fires, /metrics and status say so', async () => {
    await sleepers(5);
    const payload = {
      schemas: ['load'],
      thresholds: { minModTuples: 0, modRatio: 0 },
      governor: { maxPauseSeconds: 2 },
    };
    const { job } = await rt.queues.enqueue('vacuum-analyze', payload);
    const done = await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!, 60_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    // deferred: the worker adds it to the result of a run stopped by load (src/runner/worker.ts).
    const r = done.job.returnvalue as VacuumAnalyzeResult & { deferred: Deferral };
    assert('tables' in r, 'a dry run');
    expect(r.tables).toEqual([]);
    expect(r.left.sort()).toEqual(['load.a', 'load.b', 'load.c']);
    expect(r.deferred).toMatchObject({
      reason: 'throttled: active sessions 5 > 3',
      limit: 'its window of 2 s (maxPauseSeconds)',
      unit: expect.stringMatching(/^ANALYZE load\.[abc]$/),
    });
    expect(await logsOf('vacuum-analyze', job.id!)).toMatch(
      /deferred by load: throttled: active sessions 5 > 3; held past its window of 2 s/,
    );

    const health = new HealthReader(rt);
    const disabled = ALERT_RULES.filter((r) => r !== 'governor-held');
    const saved = rt.config.alerts.disabled;
    rt.config.alerts.disabled = [...disabled];
    try {
      const monitor = new AlertMonitor(rt, health, undefined);
      const fired = (await monitor.evaluate())!;
      expect(fired.fired).toEqual(['governor-held:vacuum-analyze:main']);
      const [incident] = await monitor.open();
      expect(incident!.summary).toMatch(
        /^vacuum-analyze on main was held back \d+ min, past its window of 2 s \(maxPauseSeconds\), and stopped/,
      );
      const status = await statusReport(health, monitor.open(), 'reading');
      expect(status.governor.deferred).toEqual([
        expect.objectContaining({ job: 'vacuum-analyze', target: 'main', reason: 'throttled: active sessions 5 > 3' }),
      ]);
      const { body } = await new Metrics(health).render();
      expect(body).toMatch(
        /pgmaint_governor_throttled_seconds_total\{job="vacuum-analyze",target="main",reason="active"\} [1-9]/,
      );
      expect(body).toMatch(/pgmaint_governor_deferred_timestamp_seconds\{job="vacuum-analyze",target="main"\} \d+/);
      expect(body).toMatch(/pgmaint_job_runs_total\{job="vacuum-analyze",target="main",outcome="deferred"\} 1/);

      // The load ends: the next run does the tables, and the alert resolves.
      await endLoad();
      const next = await waitForFinished(
        rt.queues.get('vacuum-analyze'),
        (await rt.queues.enqueue('vacuum-analyze', payload)).job.id!,
      );
      expect(next.state, next.job.failedReason).toBe('completed');
      const nextResult = next.job.returnvalue as VacuumAnalyzeResult;
      assert('left' in nextResult, 'a dry run');
      expect(nextResult.left).toEqual([]);
      expect((await monitor.evaluate())!.resolved).toEqual(['governor-held:vacuum-analyze:main']);
    } finally {
      rt.config.alerts.disabled = saved;
    }
  });

  it("a run's budget ends its wait too: deferred at its time budget", async () => {
    await sleepers(5);
    const { job } = await rt.queues.enqueue('vacuum-analyze', {
      schemas: ['load'],
      thresholds: { minModTuples: 0, modRatio: 0 },
      budgetSeconds: 2,
    });
    const done = await waitForFinished(rt.queues.get('vacuum-analyze'), job.id!, 60_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect((done.job.returnvalue as { deferred: Deferral }).deferred.limit).toBe('its time budget');
  });
});
