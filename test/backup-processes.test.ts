// A base backup whose worker is SIGKILLed mid-copy: nothing it left counts as a
// backup, and the job is completed by another worker process.
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseDir, listBaseBackups } from '../src/backup-catalog.ts';
import type { Runtime } from '../src/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from './support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('backup_procs');
  await h.ownCluster();
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
