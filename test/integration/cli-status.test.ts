// `pgmaint status` on a system with something to say: a cluster of this file's own with
// a failed PITR drill (and the alert it opened), a verified base backup, an archive that
// lags behind a busy server, and a partitioned table's runway. Each shows in the table
// a person reads and in the `--json` a script reads, and the two agree.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveCheckResult } from '../../jobs/archive-check.ts';
import { humanDuration } from '../../src/cli/table.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { PostgresInstance } from '../../src/dev/devstack.ts';
import { AlertMonitor } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import type { StatusReport } from '../../src/monitoring/status.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let cluster: PostgresInstance;
let db: pg.Pool;
const DAY = 86_400_000;

beforeAll(async () => {
  h = await createHarness('cli_status');
  ({ pg: cluster, pool: db } = await h.ownCluster());
  h.configFile({
    partitions: [{ table: 'app.events', column: 'ts', interval: 'day' }],
    backups: { scratchDir: path.join(h.dir, 'scratch'), drillTables: ['app.herd'] },
  });
  // Partitions from yesterday to two days ahead (UTC days): a runway of two to three days.
  const today = Math.floor(Date.now() / DAY) * DAY;
  const day = (n: number) => new Date(today + n * DAY).toISOString();
  await db.query(`create schema app;
    create table app.herd as select g as id from generate_series(1, 100) g;
    create table app.busy (v int);
    create table app.events (ts timestamptz not null, v int) partition by range (ts)`);
  for (let n = -1; n < 3; n++)
    await db.query(
      `create table app.events_${n + 1} partition of app.events for values from ('${day(n)}') to ('${day(n + 1)}')`,
    );
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['pitr-drill', 'base-backup', 'archive-check']);
});
afterAll(() => h.close());

async function run(job: string, payload: object = {}) {
  const { job: j } = await rt.queues.enqueue(job, payload);
  return waitForFinished(rt.queues.get(job), j.id!, 120_000);
}

async function status(args: string[]) {
  const p = h.spawnPgmaint(['status', ...args], { LOG_LEVEL: 'warn' });
  expect(await p.exited).toBe(0);
  return p.output();
}

/**
 * archive-check while the server writes a WAL segment every 0.3 s and each takes 2 s to
 * archive: the archive is behind when the check reads it.
 */
async function checkWhileBusy(): Promise<ArchiveCheckResult> {
  const dir = cluster.walArchiveDir;
  const setCommand = async (command: string) => {
    await db.query(`alter system set archive_command = '${command}'`);
    await db.query('select pg_reload_conf()');
  };
  // Each copy is back-dated a minute before it takes its name (so no reader sees it fresh),
  // and the lag reads the same on a slow machine; the check starts only once a segment
  // shows the archiver runs this command, not the old one.
  await setCommand(
    `test ! -f ${dir}/%f && sleep 2 && cp %p ${dir}/.%f.tmp && touch -d "60 seconds ago" ${dir}/.%f.tmp ` +
      `&& mv ${dir}/.%f.tmp ${dir}/%f`,
  );
  const deadline = Date.now() + 30_000;
  for (;;) {
    await db.query('insert into app.busy values (1)');
    const { rows } = await db.query<{ wal: string }>('select pg_walfile_name(pg_switch_wal()) as wal');
    const copy = path.join(dir, rows[0]!.wal);
    await new Promise((r) => setTimeout(r, 2500));
    const st = await stat(copy).catch(() => null);
    if (st && Date.now() - st.mtimeMs > 30_000) break;
    if (Date.now() > deadline) throw new Error('the archiver never ran the slow archive_command');
  }
  let busy = true;
  const writing = (async () => {
    while (busy) {
      await db.query('insert into app.busy values (1)');
      await db.query('select pg_switch_wal()');
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  try {
    const done = await run('archive-check', { maxLagSegments: 1000 });
    expect(done.state, done.job.failedReason).toBe('completed');
    return done.job.returnvalue as ArchiveCheckResult;
  } finally {
    busy = false;
    await writing;
    await setCommand(`test ! -f ${dir}/%f && cp %p ${dir}/%f`);
  }
}

describe('pgmaint status on a system with content', () => {
  it('shows the open alert, the failed drill, the base backup age, the archive lag and the runway', async () => {
    const drill = await run('pitr-drill');
    expect(drill.state).toBe('failed');
    expect(drill.job.failedReason).toMatch(/no verified base backup or set of target "main"/);
    const base = await run('base-backup');
    expect(base.state, base.job.failedReason).toBe('completed');
    const archive = await checkWhileBusy();
    expect(archive.lagSegments).toBeGreaterThan(0);
    expect(archive.lagSeconds).toBeGreaterThanOrEqual(50);
    // The monitor opens the incident of the failed drill, as the server's would.
    await rt.history.flush();
    const evaluated = await new AlertMonitor(rt, new HealthReader(rt), undefined).evaluate();
    expect(evaluated?.fired).toContain('job-failed:pitr-drill:NO_BASE_BACKUP');

    const json = await status(['--json']);
    const report = JSON.parse(json.slice(json.search(/^[[{]/m))) as StatusReport;
    expect(report.errors).toEqual({});
    const alert = report.alerts.find((a) => a.rule === 'job-failed');
    expect(alert).toMatchObject({
      severity: 'critical',
      summary: expect.stringMatching(
        /^pitr-drill on main failed after its last attempt with NO_BASE_BACKUP: no verified base backup/,
      ),
    });
    const [main] = report.targets;
    expect(main).toMatchObject({
      target: 'main',
      dumpAgeSeconds: null,
      baseBackupAgeSeconds: expect.any(Number),
      drill: { ok: false, rtoSeconds: null, rpoSeconds: null },
      archiveLagSeconds: archive.lagSeconds,
    });
    expect(main!.baseBackupAgeSeconds).toBeLessThan(600);
    expect(report.partitions).toEqual([
      {
        target: 'main',
        table: 'app.events',
        runwaySeconds: expect.any(Number),
        defaultRows: 0,
        strandedPartitions: [],
        policy: true,
      },
    ]);
    expect(report.partitions[0]!.runwaySeconds).toBeGreaterThan(2 * 86_400 - 60);
    expect(report.partitions[0]!.runwaySeconds).toBeLessThanOrEqual(3 * 86_400);

    const table = await status([]);
    expect(table).toMatch(/^SEVERITY\s+RULE\s+SINCE\s+SUMMARY$/m);
    expect(table).toMatch(
      /^critical\s+job-failed\s+\S+( \S+)? ago\s+pitr-drill on main failed after its last attempt with NO_BASE/m,
    );
    expect(table).toMatch(/^TARGET\s+DUMP\s+BASE BACKUP\s+PITR DRILL\s+ARCHIVE LAG\s+RECOVERY WINDOW$/m);
    const row = table.split('\n').find((l) => l.startsWith('main '))!;
    const lag = humanDuration(archive.lagSeconds).replace(' ', '\\s');
    expect(row).toMatch(new RegExp(`^main\\s+none\\s+\\d+[sm]( \\d+s)?\\s+FAILED \\S+( \\S+)? ago\\s+${lag}\\s+\\S`));
    expect(table).toMatch(/^TARGET\s+TABLE\s+RUNWAY\s+DEFAULT ROWS\s+STRANDED\s+ERROR$/m);
    expect(table).toMatch(/^main\s+app\.events\s+2d \d+h\s+0\s+-\s+-$/m);
  });
});
