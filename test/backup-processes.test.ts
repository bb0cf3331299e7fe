// A base backup whose worker is SIGKILLed mid-copy: nothing it left counts as a
// backup, and the job is completed by another worker process.
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseDir, dumpDir, listBaseBackups, listDumps } from '../src/backup-catalog.ts';
import type { Runtime } from '../src/runtime.ts';
import { createHarness, waitForFinished, waitUntil, waitUntilBlocked, type Harness } from './support/harness.ts';

let h: Harness;
let rt: Runtime;
let pool: import('pg').Pool;

beforeAll(async () => {
  h = await createHarness('backup_procs');
  ({ pool } = await h.ownCluster());
  h.configFile({ worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 } });
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
    await waitUntil(async () => fs.existsSync(dir) && fs.readdirSync(dir).some((e) => e.endsWith('.partial')), 20_000, 'the partial base backup');
    first.child.kill('SIGKILL');
    await first.exited;
    expect(await listBaseBackups(h.backupDir, 'main')).toEqual([]);

    const second = h.spawnPgmaint(['worker', '--queues', 'base-backup']);
    await second.waitFor(/worker started/);
    const { state, job: done } = await waitForFinished(rt.queues.get('base-backup'), job.id!, 90_000);
    expect(state).toBe('completed');
    const listed = await listBaseBackups(h.backupDir, 'main');
    expect(listed.map((b) => b.manifest.label)).toEqual([(done.returnvalue as { label: string }).label]);
    // The interrupted run's directory was removed by the run that completed.
    expect(fs.readdirSync(dir).filter((e) => e.startsWith('.'))).toEqual([]);
    const { logs } = await rt.queues.get('base-backup').getJobLogs(job.id!);
    expect(logs.join('\n')).toMatch(/removed leftover \..*\.partial from an interrupted run/);
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});

describe('backup under SIGKILL', () => {
  it('a worker SIGKILLed while pg_dump runs: the job completes on another worker; only its verified dump counts', async () => {
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
    expect(await listDumps(h.backupDir, 'main')).toEqual([]);
    await holder.query('rollback');
    holder.release();

    const second = h.spawnPgmaint(['worker', '--queues', 'backup']);
    await second.waitFor(/worker started/);
    const { state } = await waitForFinished(rt.queues.get('backup'), job.id!, 60_000);
    expect(state).toBe('completed');
    const dumps = await listDumps(h.backupDir, 'main');
    expect(dumps.map((d) => d.manifest.jobId)).toEqual([job.id]);
    expect(dumps[0]!.manifest.rowCounts!['public.ledger']).toBe(1000);
    // Whatever the killed run left is a hidden .partial file, never listed as a dump.
    for (const e of fs.readdirSync(dumpDir(h.backupDir, 'main'))) expect(e.startsWith('.') ? /\.partial$/.test(e) : dumps.some((d) => e.startsWith(d.manifest.file))).toBe(true);
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});
