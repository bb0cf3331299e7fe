import { Queue } from 'bullmq';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { type ApiRequest, getJob, type HttpDeps } from '../../src/http/handlers.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';
import { slowChild, sqlProbe } from '../support/test-jobs.ts';

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('worker');
  h.configFile({ worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 } });
  rt = h.runtime({ jobs: [...jobs, sqlProbe, slowChild], schedules: [] });
  startWorkers(rt, ['sql-probe', 'slow-child', 'noop']);
  await h.admin.query('create table probe_lock (id int)');
  // An enqueue on a connection still connecting is refused (nothing enqueued): the tests start once it is up.
  await waitUntil(async () => rt.queues.connection.status === 'ready', 30_000, 'the Redis connection to be ready');
});
afterAll(() => h.close());

const finished = (queue: string, id: string) => waitForFinished(rt.queues.get(queue), id);

async function historyOf(id: string, queue: string) {
  await rt.history.flush(); // rows are written in batches; read what this process recorded
  const { rows } = await h.admin.query(
    `select attempt, outcome, error from pgmaint.run_history where queue = $1 and job_id = $2 order by id`,
    [queue, id],
  );
  return rows as { attempt: number; outcome: string; error: string | null }[];
}

describe('worker runtime against real PostgreSQL', () => {
  it('a succeeded run ends at 100 % progress, even when its handler never reported any', async () => {
    const { job } = await rt.queues.enqueue('noop', { sleepMs: 0 });
    const { state } = await finished('noop', job.id!);
    expect(state).toBe('completed');
    // Written for many runs at once, within moments of the completion.
    await waitUntil(
      async () => (await rt.queues.get('noop').getJob(job.id!))?.progress === 100,
      2000,
      'progress 100 in Redis',
    );
    // The API says 100 as soon as the job has completed.
    expect(
      (await getJob({ rt } as HttpDeps, { params: { queue: 'noop', id: job.id! } } as unknown as ApiRequest)).body,
    ).toMatchObject({
      state: 'completed',
      progress: 100,
    });
  });

  it('fails a missing relation at once, without retry, with the SQLSTATE in the reason', async () => {
    const { job } = await rt.queues.enqueue('sql-probe', { scenario: 'missing-relation' });
    const { state, job: done } = await finished('sql-probe', job.id!);
    expect(state).toBe('failed');
    expect(done.attemptsMade).toBe(1);
    expect(done.failedReason).toMatch(/relation "no_such_table" does not exist \(SQLSTATE 42P01\)/);
    expect(await historyOf(job.id!, 'sql-probe')).toEqual([
      { attempt: 1, outcome: 'failed', error: expect.stringContaining('42P01') },
    ]);
  });

  it('fails a syntax error at once', async () => {
    const { job } = await rt.queues.enqueue('sql-probe', { scenario: 'syntax' });
    const { state, job: done } = await finished('sql-probe', job.id!);
    expect(state).toBe('failed');
    expect(done.attemptsMade).toBe(1);
    expect(done.failedReason).toMatch(/42601/);
  });

  it('retries a lock timeout and succeeds once the lock is gone', async () => {
    const holder = await h.admin.connect();
    await holder.query('begin');
    await holder.query('lock table probe_lock in access exclusive mode');
    const { job } = await rt.queues.enqueue('sql-probe', { scenario: 'lock-table' });
    await waitUntil(
      async () => (await historyOf(job.id!, 'sql-probe')).some((r) => r.outcome === 'retrying'),
      20_000,
      'a retrying attempt',
    );
    await holder.query('rollback');
    holder.release();
    const { state, job: done } = await finished('sql-probe', job.id!);
    expect(state).toBe('completed');
    expect(done.returnvalue).toEqual({ locked: 'probe_lock' });
    const history = await historyOf(job.id!, 'sql-probe');
    expect(history[0]).toMatchObject({ attempt: 1, outcome: 'retrying', error: expect.stringContaining('55P03') });
    expect(history.at(-1)).toMatchObject({ outcome: 'succeeded' });
  });

  it('kills the child process at the maximum run time and records timed_out', async () => {
    const { job } = await rt.queues.enqueue('slow-child', {});
    // Another deployment's run of the same job and id, on the same server: the abort
    // ends this attempt's sessions, never that one.
    const bystander = new pg.Client({ connectionString: h.dbUrl, application_name: `pgmaint/slow-child/${job.id}` });
    await bystander.connect();
    const { state, job: done } = await finished('slow-child', job.id!);
    expect(state).toBe('failed');
    expect(done.attemptsMade).toBe(1); // a timeout is not retried
    expect(done.failedReason).toMatch(/timed out after 2s/);
    expect(await historyOf(job.id!, 'slow-child')).toEqual([
      { attempt: 1, outcome: 'timed_out', error: expect.stringMatching(/timed out/) },
    ]);
    // psql was killed, so its backend goes away too.
    await waitUntil(
      async () => {
        const { rows } = await h.admin.query(
          `select count(*)::int as n from pg_stat_activity where query like '%pgmaint-slow-child ${job.id}%' and ` +
            `pid <> pg_backend_pid()`,
        );
        return rows[0].n === 0;
      },
      10_000,
      'the sleeping backend to end',
    );
    expect((await bystander.query('select 1 as alive')).rows).toEqual([{ alive: 1 }]);
    await bystander.end();
  });

  it('rejects a payload that was written to Redis behind the API, without retry', async () => {
    const raw = new Queue('sql-probe', { connection: rt.queues.connection, prefix: rt.config.redis.prefix });
    const job = await raw.add(
      'sql-probe',
      { payload: { target: 'main', scenario: 'drop everything' }, trigger: 'ad-hoc' } as never,
      { attempts: 3 },
    );
    const { state, job: done } = await finished('sql-probe', job.id!);
    expect(state).toBe('failed');
    expect(done.attemptsMade).toBe(1);
    expect(done.failedReason).toMatch(/invalid payload: scenario/);
    await raw.close();
  });
});
