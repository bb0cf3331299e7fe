import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import { type BackupResult, dumpDir } from '../../jobs/backup.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('backup');
  h.configFile({ jobs: { backup: { timeoutMs: 3000, backoffMs: 100 } } });
  await h.admin.query(`create schema sales; create table sales.sale_order (id int primary key, amount numeric);
    insert into sales.sale_order select g, g * 1.5 from generate_series(1, 5000) g`);
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['backup']);
});
afterAll(() => h.close());

const finished = (id: string) => waitForFinished(rt.queues.get('backup'), id);

const dir = () => dumpDir(h.backupDir, 'main');

describe('backup', () => {
  it('writes a dump that pg_restore --list reads and whose sha256 matches its manifest', async () => {
    const { job } = await rt.queues.enqueue('backup', {});
    const { state, job: done } = await finished(job.id!);
    expect(state).toBe('completed');
    const result = done.returnvalue as BackupResult;
    assert(!('skipped' in result), 'the backup skipped');
    const manifest = JSON.parse(fs.readFileSync(result.manifest, 'utf8'));
    const actual = createHash('sha256').update(fs.readFileSync(result.file)).digest('hex');
    expect(manifest.sha256).toBe(actual);
    expect(manifest.bytes).toBe(fs.statSync(result.file).size);
    expect(manifest).toMatchObject({
      kind: 'pgmaint-dump',
      target: 'main',
      format: 'custom',
      serverVersion: expect.stringMatching(/^15/),
    });
    const list = await runProcess(binPath('pg_restore'), ['--list', result.file]);
    expect(list.stdout).toMatch(/TABLE DATA sales sale_order/);
    expect(fs.readdirSync(dir()).filter((f) => f.includes('partial'))).toEqual([]);
    // Progress and log lines for Bull Board.
    expect(done.progress).toBe(100);
    const { logs } = await rt.queues.get('backup').getJobLogs(job.id!);
    expect(logs.join('\n')).toMatch(/pg_dump of database .* tables\)/);
    expect(logs.join('\n')).toMatch(/backup verified/);
    // The run history holds the result, and no secret.
    await rt.history.flush();
    const { rows } = await h.admin.query(
      `select outcome, result, payload::text from pgmaint.run_history where queue = 'backup' and job_id = $1`,
      [job.id],
    );
    expect(rows).toEqual([
      {
        outcome: 'succeeded',
        result: expect.objectContaining({ sha256: actual }),
        payload: '{"format": "custom", "target": "main", "compress": 6}',
      },
    ]);
  });

  it('a second "backup now" while one is queued returns the same job', async () => {
    const a = await rt.queues.enqueue('backup', {});
    const b = await rt.queues.enqueue('backup', { target: 'main' });
    expect(b.job.id).toBe(a.job.id);
    expect(b.existing).toBe(true);
    expect((await finished(a.job.id!)).state).toBe('completed');
    // Once finished, the next request is a new run.
    const c = await rt.queues.enqueue('backup', {});
    expect(c.job.id).not.toBe(a.job.id);
    await finished(c.job.id!);
  });

  it('a pg_dump killed at the maximum run time leaves no partial file and no dump', async () => {
    const before = fs.readdirSync(dir()).sort();
    // pg_dump waits for its ACCESS SHARE lock behind this one until the job times out.
    const holder = await h.admin.connect();
    await holder.query('begin; lock table sales.sale_order in access exclusive mode');
    try {
      const { job } = await rt.queues.enqueue('backup', {});
      const { state, job: done } = await finished(job.id!);
      expect(state).toBe('failed');
      expect(done.failedReason).toMatch(/timed out/);
      expect(fs.readdirSync(dir()).sort()).toEqual(before);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  });

  it('an unusable BACKUP_DIR fails at once with a message that names it', async () => {
    const file = path.join(h.dir, 'not-a-dir');
    fs.writeFileSync(file, '');
    const bad = h.runtime({ schedules: [], env: { BACKUP_DIR: file } });
    startWorkers(bad, ['backup']);
    // Stop the good worker from taking this run.
    await rt.close();
    const { job } = await bad.queues.enqueue('backup', {});
    const { state, job: done } = await waitForFinished(bad.queues.get('backup'), job.id!, 30_000);
    expect(state).toBe('failed');
    expect(done.attemptsMade).toBe(1);
    expect(done.failedReason).toMatch(/^BACKUP_DIR: .*not-a-dir.* is not writable/);
  });
});
