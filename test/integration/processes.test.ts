// pgmaint as real processes: SIGKILL mid-job, SIGTERM drain, and three processes
// syncing schedules at once.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('procs');
  h.configFile({ worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 8000 } });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
});
afterAll(() => h.close());
// A test that fails half-way must not leave a worker taking the next test's jobs.
afterEach(() => h.killChildren());

async function outcomes(jobId: string): Promise<string[]> {
  const { rows } = await h.admin.query(
    `select outcome from pgmaint.run_history where queue = 'noop' and job_id = $1 order by id`,
    [jobId],
  );
  return rows.map((r) => r.outcome);
}

describe('worker processes', () => {
  it('a job whose worker is SIGKILLed mid-run completes on a second worker', async () => {
    const first = h.spawnPgmaint(['worker', '--queues', 'noop']);
    await first.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('noop', { sleepMs: 3000 });
    await waitUntil(async () => (await outcomes(job.id!)).includes('running'), 20_000, 'the job to start');
    first.child.kill('SIGKILL');
    await first.exited;

    const second = h.spawnPgmaint(['worker', '--queues', 'noop']);
    await second.waitFor(/worker started/);
    const { state, job: done } = await waitForFinished(rt.queues.get('noop'), job.id!, 30_000);
    expect(state).toBe('completed');
    expect(done.returnvalue).toEqual({ sleptMs: 3000 });
    // The second worker writes its final row in its next batch.
    await waitUntil(async () => (await outcomes(job.id!)).at(-1) === 'succeeded', 5000, 'the succeeded history row');
    expect(await outcomes(job.id!)).toEqual(['abandoned', 'succeeded']);
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });

  it('SIGTERM stops taking jobs, lets the running one finish, and exits 0', async () => {
    const w = h.spawnPgmaint(['worker', '--queues', 'noop']);
    await w.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('noop', { sleepMs: 2000 });
    await waitUntil(async () => (await outcomes(job.id!)).includes('running'), 20_000, 'the job to start');
    w.child.kill('SIGTERM');
    await w.waitFor(/shutting down/);
    // Enqueued after the signal: must not be taken by the draining worker.
    const { job: later } = await rt.queues.enqueue('noop', { sleepMs: 0 });
    expect(await w.exited).toBe(0);
    expect(await (await rt.queues.get('noop').getJob(job.id!))!.getState()).toBe('completed');
    expect(await outcomes(job.id!)).toEqual(['succeeded']);
    expect(['waiting', 'delayed']).toContain(await (await rt.queues.get('noop').getJob(later.id!))!.getState());
    expect(await outcomes(later.id!)).toEqual([]);
    expect(w.output()).toMatch(/shutting down/);
  });

  it('SIGTERM past the shutdown timeout aborts the running job, which is retried later', async () => {
    const w = h.spawnPgmaint(['worker', '--queues', 'noop'], {});
    await w.waitFor(/worker started/);
    // Drain the waiting job from the previous test first.
    const { job } = await rt.queues.enqueue('noop', { sleepMs: 60_000 });
    await waitUntil(async () => (await outcomes(job.id!)).includes('running'), 20_000, 'the long job to start');
    const t0 = Date.now();
    w.child.kill('SIGTERM');
    expect(await w.exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(30_000);
    const state = await (await rt.queues.get('noop').getJob(job.id!))!.getState();
    expect(['delayed', 'waiting']).toContain(state);
    expect(await outcomes(job.id!)).toEqual(['retrying']);
  });

  it('three processes starting together leave one scheduler per id and one pending run', async () => {
    const procs = [0, 1, 2].map(() => h.spawnPgmaint(['worker', '--queues', 'backup']));
    await Promise.all(procs.map((p) => p.waitFor(/schedules synced/)));
    const queue = rt.queues.get('backup');
    const schedulers = await queue.getJobSchedulers(0, -1);
    expect(schedulers.map((s) => s.key)).toEqual(['backup-main-nightly']);
    expect(await queue.getDelayedCount()).toBe(1);
    const [delayed] = await queue.getDelayed();
    expect(delayed!.id).toMatch(/^repeat:backup-main-nightly:\d+$/);
    for (const p of procs) p.child.kill('SIGTERM');
    expect(await Promise.all(procs.map((p) => p.exited))).toEqual([0, 0, 0]);
  });

  it('a configuration error stops a process at start, naming the variable, before any job runs', async () => {
    const { job } = await rt.queues.enqueue('noop', {});
    for (const [variable, value, message] of [
      ['ALERT_WEBHOOK_URL', 'ftp://hooks.example', /ALERT_WEBHOOK_URL: must be an http:\/\/ or https:\/\/ URL/],
      ['METRICS_TOKEN', 'short', /METRICS_TOKEN: must be at least 16 characters/],
      ['DATABASE_URL', 'mysql://db/x', /DATABASE_URL: must be a postgres:\/\/ or postgresql:\/\/ URL/],
    ] as const) {
      const p = h.spawnPgmaint(['worker', '--queues', 'noop'], { [variable]: value });
      expect(await p.exited).toBe(2);
      expect(p.output()).toMatch(message);
    }
    expect(await rt.queues.get('noop').getJobState(job.id!)).toBe('waiting');
    await rt.queues.get('noop').remove(job.id!);
  });
});
