// A base backup whose worker is SIGKILLed mid-copy: nothing it left counts as a
// backup, and the job is completed by another worker process.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, assert, beforeAll, describe, expect, it } from 'vitest';
import type { BaseBackupResult } from '../../jobs/base-backup.ts';
import type { PitrDrillResult } from '../../jobs/pitr-drill.ts';
import { baseDir, dumpDir, listBaseBackups, listDumps } from '../../src/backup/catalog.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, waitUntilBlocked, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let pool: import('pg').Pool;
let scratchRoot: string;

beforeAll(async () => {
  h = await createHarness('backup_procs');
  ({ pool } = await h.ownCluster());
  scratchRoot = path.join(h.dir, 'scratch');
  fs.mkdirSync(scratchRoot, { recursive: true });
  h.configFile({
    worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 },
    backups: { scratchDir: scratchRoot },
  });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

describe('base-backup under SIGKILL', () => {
  it('a SIGKILLed base backup leaves nothing that counts; another worker completes the job', async () => {
    const dir = baseDir(h.backupDir, 'main');
    const first = h.spawnPgmaint(['worker', '--queues', 'base-backup']);
    await first.waitFor(/worker started/);
    // 4 MB/s over a ~30 MB cluster: several seconds of copying to kill it in.
    const { job } = await rt.queues.enqueue('base-backup', { maxRate: '4M' });
    await waitUntil(
      async () => fs.existsSync(dir) && fs.readdirSync(dir).some((e) => e.endsWith('.partial')),
      20_000,
      'the partial base backup',
    );
    first.child.kill('SIGKILL');
    await first.exited;
    expect((await listBaseBackups(h.backupDir, 'main')).bases).toEqual([]);

    const second = h.spawnPgmaint(['worker', '--queues', 'base-backup']);
    await second.waitFor(/worker started/);
    const { state, job: done } = await waitForFinished(rt.queues.get('base-backup'), job.id!, 90_000);
    expect(state).toBe('completed');
    const listed = (await listBaseBackups(h.backupDir, 'main')).bases;
    const result = done.returnvalue as BaseBackupResult;
    assert(!('skipped' in result), 'the base backup skipped');
    expect(listed.map((b) => b.manifest.label)).toEqual([result.label]);
    // The interrupted run's directory was removed by the run that completed.
    expect(fs.readdirSync(dir).filter((e) => e.startsWith('.'))).toEqual([]);
    const { logs } = await rt.queues.get('base-backup').getJobLogs(job.id!);
    expect(logs.join('\n')).toMatch(/removed leftover \..*\.partial from an interrupted run/);
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});

describe('backup under SIGKILL', () => {
  it(
    'a worker SIGKILLed while pg_dump runs: the job completes on another worker; only its verified dump ' + 'counts',
    async () => {
      await pool.query('create table if not exists ledger as select g as id from generate_series(1, 1000) g');
      // pg_dump waits behind this lock, so the worker dies with the dump under way.
      const holder = await pool.connect();
      await holder.query('begin; lock table ledger in access exclusive mode');
      const first = h.spawnPgmaint(['worker', '--queues', 'backup']);
      await first.waitFor(/worker started/);
      const { job } = await rt.queues.enqueue('backup', {});
      await waitUntilBlocked(pool, `application_name like 'pgmaint/backup/%'`, 'pg_dump to wait on its lock', 20_000);
      first.child.kill('SIGKILL');
      await first.exited;
      expect((await listDumps(h.backupDir, 'main')).dumps).toEqual([]);
      await holder.query('rollback');
      holder.release();

      const second = h.spawnPgmaint(['worker', '--queues', 'backup']);
      await second.waitFor(/worker started/);
      const { state } = await waitForFinished(rt.queues.get('backup'), job.id!, 60_000);
      expect(state).toBe('completed');
      const dumps = (await listDumps(h.backupDir, 'main')).dumps;
      expect(dumps.map((d) => d.manifest.jobId)).toEqual([job.id]);
      expect(dumps[0]!.manifest.rowCounts!['public.ledger']).toBe(1000);
      // Whatever the killed run left is a hidden .partial file, never listed as a dump.
      for (const e of fs.readdirSync(dumpDir(h.backupDir, 'main')))
        expect(e.startsWith('.') ? /\.partial$/.test(e) : dumps.some((d) => e.startsWith(d.manifest.file))).toBe(true);
      second.child.kill('SIGTERM');
      expect(await second.exited).toBe(0);
    },
  );
});

describe('pitr-drill taken over after its worker died', () => {
  it("runs cleanly on a second worker (markers of its own), and the killed attempt's scratch instance is " +
    'removed', async () => {
    // A verified base backup to restore: the first test's, or a fresh one.
    if (!(await listBaseBackups(h.backupDir, 'main')).bases.length) {
      const w = h.spawnPgmaint(['worker', '--queues', 'base-backup']);
      await w.waitFor(/worker started/);
      const { job } = await rt.queues.enqueue('base-backup', {});
      expect((await waitForFinished(rt.queues.get('base-backup'), job.id!, 90_000)).state).toBe('completed');
      await w.killGroup();
    }
    const first = h.spawnPgmaint(['worker', '--queues', 'pitr-drill']);
    await first.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('pitr-drill', {});
    // Killed once the markers are written and the scratch instance is being made.
    await waitUntil(
      async () => fs.readdirSync(scratchRoot).length > 0,
      60_000,
      'the drill to create its scratch instance',
    );
    await first.killGroup();
    const left = fs.readdirSync(scratchRoot);
    expect(left.length).toBeGreaterThan(0);

    const second = h.spawnPgmaint(['worker', '--queues', 'pitr-drill']);
    await second.waitFor(/worker started/);
    const { state, job: done } = await waitForFinished(rt.queues.get('pitr-drill'), job.id!, 120_000);
    expect(state, done.failedReason).toBe('completed');
    const result = done.returnvalue as PitrDrillResult;
    expect(result.checks.every((c) => c.ok)).toBe(true);
    // Both attempts wrote markers; each under its own drill id.
    const { rows } = await pool.query(
      `select count(distinct drill_id)::int as n from pgmaint.drill_marker where drill_id like $1`,
      [`${job.id}:%`],
    );
    expect(rows[0].n).toBe(2);
    expect(fs.readdirSync(scratchRoot).filter((e) => left.includes(e))).toEqual([]);
    const { logs } = await rt.queues.get('pitr-drill').getJobLogs(job.id!);
    expect(logs.join('\n')).toMatch(/left by a drill whose worker died/);
    await second.killGroup();
  }, 240_000);
});
