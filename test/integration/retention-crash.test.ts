// Retention killed at every step: the worker's whole process group is SIGKILLed after
// the DETACH, during the archive's pg_dump, and between the archive and the DROP.
// Each time the run is finished by another worker (archive → verify → drop), nothing
// is left as a plain table outside its parent, and the journal says where every
// partition went. Table names carry a $, which the validator allows.
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { HealthSampler } from '../../src/monitoring/sampler.ts';
import { judge } from '../../src/monitoring/alerts.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  VIEWER_TOKEN,
  waitForFinished,
  waitUntil,
  type Harness,
} from '../support/harness.ts';
import { holdableTool, holdDdl } from '../support/holds.ts';

let h: Harness;
let rt: Runtime;
let faultDir: string;
let faultBin: string;
const PARENT = 'crash.sale$line';
const partition = (day: number) => `sale$line_p202601${String(day).padStart(2, '0')}`;

beforeAll(async () => {
  h = await createHarness('retention_crash');
  h.configFile({
    partitions: [
      { table: PARENT, column: 'ts', interval: 'day', retention: '1 day', maxDropsPerRun: 1, lockTimeout: '120s' },
    ],
    worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 },
  });
  await h.admin.query(
    `create schema crash; create table crash."sale$line" (ts timestamptz not null, v int) partition by range (ts)`,
  );
  for (let d = 1; d <= 10; d++) {
    const day = `2026-01-${String(d).padStart(2, '0')}`;
    await h.admin.query(
      `create table crash."${partition(d)}" partition of crash."sale$line" for values from ('${day} 00:00+00') to ` +
        `('${day} 00:00+00'::timestamptz + interval '1 day')`,
    );
    await h.admin.query(
      `insert into crash."sale$line" select '${day} 06:00+00'::timestamptz + make_interval(mins => g), g from ` +
        `generate_series(1, 10) g`,
    );
  }
  // PG_BINDIR for the worker that is killed: the real tools, but a pg_dump that can be
  // held before it starts ("after DETACH") or after it has written its file ("during").
  ({ bin: faultBin, faults: faultDir } = holdableTool(h.dir, 'pg_dump'));
  // "After the archive, before the DROP": the DROP TABLE of a pgmaint session waits here.
  await holdDdl(h.admin, 'crash', 'hold_drop', 'DROP TABLE');
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
});
afterAll(async () => {
  await h.admin.query('drop event trigger if exists hold_drop').catch(() => undefined);
  await h.close();
});
afterEach(async () => {
  await h.killChildren();
  for (const f of fs.readdirSync(faultDir)) fs.rmSync(path.join(faultDir, f));
  await h.admin.query('truncate crash.hold_drop');
});

async function place(name: string): Promise<'attached' | 'detached' | 'missing'> {
  const { rows } = await h.admin.query(
    `select i.inhrelid is not null as attached from pg_class c join pg_namespace n on n.oid = c.relnamespace left ` +
      `join pg_inherits i on i.inhrelid = c.oid where n.nspname = 'crash' and c.relname = $1`,
    [name],
  );
  return rows[0] ? (rows[0].attached ? 'attached' : 'detached') : 'missing';
}

async function journal(name: string): Promise<string[]> {
  const { rows } = await h.admin.query(
    `select state from pgmaint.retention_journal where partition_name = $1 order by id`,
    [name],
  );
  return rows.map((r) => r.state);
}

/** Kills a retention worker at a step, then lets a clean worker finish the same job. */
async function killAt(victim: string, hold: () => Promise<void>, expectedState: string) {
  const doomed = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions'], { PG_BINDIR: faultBin });
  await doomed.waitFor(/worker started/);
  const { job } = await rt.queues.enqueue('drop-expired-partitions', { now: '2026-01-11T12:00:00Z' });
  await hold();
  await doomed.killGroup();
  // The kill leaves the partition outside its parent, and the journal holding it.
  expect(await place(victim)).toBe('detached');
  expect(await journal(victim)).toEqual([expectedState]);
  // pg_sleep in the held DROP outlives the client: end that session as a crash would.
  await h.admin.query(
    `select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and ` +
      `(application_name like 'pgmaint/drop-expired%' or ` +
      `(application_name like 'pgmaint%' and wait_event = 'PgSleep'))`,
  );
  await h.admin.query('truncate crash.hold_drop');

  const rescuer = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions']);
  await rescuer.waitFor(/worker started/);
  const { state, job: done } = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 60_000);
  expect(state, done.failedReason).toBe('completed');
  expect(await place(victim)).toBe('missing');
  expect(await journal(victim)).toEqual(['dropped']);
  // Archives are named after the parent. No partial or manifest-less file survives, and
  // exactly one archive lists the victim, with its rows.
  const dir = path.join(h.backupDir, 'partitions', 'main');
  const files = fs.readdirSync(dir).filter((f) => f.startsWith('crash.sale$line-'));
  const dumps = files.filter((f) => !f.endsWith('.manifest.json'));
  expect(
    dumps.every((f) => f.endsWith('.dump.zst') && files.includes(`${f}.manifest.json`)),
    files.join(' '),
  ).toBe(true);
  const listing = dumps
    .map((f) => JSON.parse(fs.readFileSync(path.join(dir, `${f}.manifest.json`), 'utf8')))
    .filter((m) => m.partitions.some((x: { partition: string }) => x.partition === `crash.${victim}`));
  expect(listing).toHaveLength(1);
  // The run that finished it may have archived the next expired partition with it.
  expect(listing[0].version).toBe(2);
  expect(listing[0].partitions).toContainEqual(expect.objectContaining({ partition: `crash.${victim}`, rows: 10 }));
  const { logs } = await rt.queues.get('drop-expired-partitions').getJobLogs(job.id!);
  expect(logs.join('\n')).toContain(`left detached by interrupted run ${job.id}`);
}

describe('drop-expired-partitions killed at every step', () => {
  it('after the DETACH, before the archive starts', async () => {
    fs.writeFileSync(path.join(faultDir, 'hold-before'), '');
    await killAt(
      partition(1),
      () =>
        waitUntil(async () => fs.existsSync(path.join(faultDir, 'reached')), 30_000, 'pg_dump to be held').then(
          () => undefined,
        ),
      'detached',
    );
  }, 120_000);

  it('during the archive pg_dump', async () => {
    fs.writeFileSync(path.join(faultDir, 'hold-after'), '');
    await killAt(
      partition(3),
      async () => {
        await waitUntil(
          async () => fs.existsSync(path.join(faultDir, 'reached')),
          30_000,
          'pg_dump to have written its file',
        );
        const dir = path.join(h.backupDir, 'partitions', 'main');
        expect(fs.readdirSync(dir).some((f) => f.startsWith('crash.sale$line-') && f.endsWith('.partial'))).toBe(true);
      },
      'detached',
    );
  }, 120_000);

  it('after the verified archive, before the DROP', async () => {
    await h.admin.query('insert into crash.hold_drop values (true)');
    await killAt(
      partition(5),
      () =>
        waitUntil(
          async () =>
            (
              await h.admin.query(
                `select 1 from pg_stat_activity where datname = current_database() and ` +
                  `application_name like 'pgmaint%' and wait_event = 'PgSleep'`,
              )
            ).rowCount,
          30_000,
          'the DROP to be held',
        ).then(() => undefined),
      'archived',
    );
  }, 120_000);

  it('an unfinished detach with no run behind it is an orphan in metrics and alerts until a run finishes ' +
    'it', async () => {
    await h.admin.query(`alter table crash."sale$line" detach partition crash."${partition(7)}"`);
    await h.admin.query(
      `insert into pgmaint.retention_journal
        (parent, partition_schema, partition_name, bound_from, bound_to, upper_bound, state, job_id)
       values ($1, 'crash', $2, '''2026-01-07 00:00:00+00''', '''2026-01-08 00:00:00+00''', '2026-01-08 00:00:00+00',
         'detached', 'lost-run')`,
      [PARENT, partition(7)],
    );
    const health = new HealthReader(rt);
    const before = (await health.read()).partitions.find((p) => p.table === PARENT)!;
    expect(before).toMatchObject({ unfinishedDetaches: 1, unfinishedPartitions: [`crash.${partition(7)}`] });
    expect(judge(await health.read(), rt.config.alerts).map((a) => a.key)).toContain(`retention-orphan:main:${PARENT}`);

    const worker = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions']);
    await worker.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('drop-expired-partitions', { now: '2026-01-11T12:00:00Z' });
    const { state, job: done } = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 60_000);
    expect(state, done.failedReason).toBe('completed');
    expect(await place(partition(7))).toBe('missing');
    expect((await health.read()).partitions.find((p) => p.table === PARENT)!.unfinishedDetaches).toBe(0);
    // Every partition that left the parent was archived and dropped; none is stranded.
    const { rows } = await h.admin.query(
      `select count(*)::int n from pgmaint.retention_journal where state not in ('dropped', 'reattached')`,
    );
    expect(rows[0].n).toBe(0);
  }, 120_000);

  it('a partition stranded by a crash is reported after its policy is removed: the journal is the record', async () => {
    await h.admin.query(
      `create table crash."sale$line_p20251231" partition of crash."sale$line" for values from ` +
        `('2025-12-31 00:00+00') to ('2026-01-01 00:00+00'); ` +
        `insert into crash."sale$line" select '2025-12-31 06:00+00'::timestamptz, g from generate_series(1, 10) g`,
    );
    // A run killed after its DETACH, before its archive.
    fs.writeFileSync(path.join(faultDir, 'hold-before'), '');
    const doomed = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions'], { PG_BINDIR: faultBin });
    await doomed.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('drop-expired-partitions', { now: '2026-01-11T12:00:00Z' });
    await waitUntil(async () => fs.existsSync(path.join(faultDir, 'reached')), 30_000, 'pg_dump to be held');
    await doomed.killGroup();
    const victim = 'sale$line_p20251231';
    expect(await place(victim)).toBe('detached');
    expect(await journal(victim)).toEqual(['detached']);

    // The policy leaves the config. A worker takes the killed run back and, with no policy, ends it
    // without touching the partition: nothing in the config names it any more.
    h.configFile({ worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 } });
    const worker = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions']);
    await worker.waitFor(/worker started/);
    const { state, job: done } = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 60_000);
    expect(state, done.failedReason).toBe('completed');
    expect(done.returnvalue).toMatchObject({ policies: [] });
    expect(await place(victim)).toBe('detached');

    const noPolicy = h.runtime({ schedules: [] });
    expect(noPolicy.config.partitions).toEqual([]);
    const app = createApp(noPolicy, new Auth(ADMIN_TOKEN, VIEWER_TOKEN), {
      health: new HealthSampler(noPolicy, new HealthReader(noPolicy), 0),
    });
    const status = await request(app).get('/api/status').set('Authorization', `Bearer ${VIEWER_TOKEN}`).expect(200);
    expect(status.body.partitions).toEqual([
      {
        target: 'main',
        table: PARENT,
        runwaySeconds: null,
        defaultRows: null,
        strandedPartitions: [`crash.${victim}`],
        policy: false,
      },
    ]);
    const alerts = judge(await new HealthReader(noPolicy).read(), noPolicy.config.alerts);
    expect(alerts.find((a) => a.key === `retention-orphan:main:${PARENT}`)?.summary).toBe(
      `1 partition(s) of ${PARENT} on main were taken out by a retention run that did not finish ` +
        `(crash.${victim}); no partition policy names ${PARENT} any more, so no run will: restore its policy to ` +
        'let drop-expired-partitions finish them, or re-attach or drop them by hand (the retention journal keeps ' +
        'their bounds)',
    );
    // Put back by hand, it is no longer stranded, and nothing is reported.
    await h.admin.query(
      `alter table crash."sale$line" attach partition crash."${victim}" for values from ('2025-12-31 00:00+00') ` +
        `to ('2026-01-01 00:00+00')`,
    );
    expect((await new HealthReader(noPolicy).read()).partitions).toEqual([]);
  }, 120_000);
});
