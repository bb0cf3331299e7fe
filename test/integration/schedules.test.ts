import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextRun } from '../../src/core/cron.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { Scheduler, resolveSchedules, type Schedule } from '../../src/runner/scheduler.ts';
import { createHarness, waitUntil, type Harness } from '../support/harness.ts';

const schedules: Schedule[] = [
  { id: 'noop-overlap', job: 'noop', cron: '0 4 * * *', tz: 'UTC', payload: { sleepMs: 1500 }, overlap: 'skip' },
  { id: 'noop-none', job: 'noop', cron: '0 3 * * *', tz: 'America/New_York', payload: {}, catchUp: 'none' },
  { id: 'noop-latest', job: 'noop', cron: '0 3 * * *', tz: 'Europe/London', payload: {}, catchUp: 'latest' },
];

let h: Harness;
let rt: Runtime;
let syncedAt: number;

beforeAll(async () => {
  h = await createHarness('sched');
  rt = h.runtime({ schedules });
  await rt.history.migrate();
  syncedAt = Date.now();
  await rt.scheduler.sync();
  startWorkers(rt, ['noop']);
});
afterAll(() => h.close());

async function runsOf(scheduleId: string) {
  const { rows } = await h.admin.query(
    `select job_id, outcome, result from pgmaint.run_history where trigger = $1 order by id`,
    [`schedule:${scheduleId}`],
  );
  return rows as { job_id: string; outcome: string; result: { skipped?: string } | null }[];
}

/** A run as its scheduler would produce it, at a chosen scheduled time (BullMQ's prevMillis; an add's own
 * timestamp is Redis's clock, runner/add-deadline.ts). */
async function addScheduledRun(s: Schedule, scheduledFor: number, payload: object) {
  return rt.queues
    .get(s.job)
    .add(
      s.job,
      { payload: { target: 'main', sleepMs: 0, ...payload }, trigger: `schedule:${s.id}`, scheduleId: s.id },
      { prevMillis: scheduledFor },
    );
}

describe('schedules', () => {
  it('creates one delayed run per scheduler at the time our cron evaluator gives, in its zone', async () => {
    const queue = rt.queues.get('noop');
    const delayed = await queue.getDelayed();
    const byScheduler = new Map(delayed.map((j) => [j.repeatJobKey, j]));
    for (const s of schedules) {
      const job = byScheduler.get(s.id)!;
      expect(job, s.id).toBeDefined();
      const at = job.timestamp + job.delay;
      expect(at).toBe(nextRun(s.cron, s.tz, syncedAt));
    }
  });

  it('skips a scheduled run while the previous run of the same schedule is active, and records it', async () => {
    const s = schedules[0]!;
    const first = await addScheduledRun(s, Date.now(), { sleepMs: 1500 });
    await waitUntil(
      async () => (await runsOf(s.id)).some((r) => r.outcome === 'running'),
      10_000,
      'first run to start',
    );
    const second = await addScheduledRun(s, Date.now(), { sleepMs: 0 });
    await waitUntil(
      async () => (await runsOf(s.id)).some((r) => r.job_id === second.id && r.outcome === 'skipped'),
      10_000,
      'second run skipped',
    );
    await waitUntil(
      async () => (await runsOf(s.id)).some((r) => r.job_id === first.id && r.outcome === 'succeeded'),
      10_000,
      'first run done',
    );
    const skipped = (await runsOf(s.id)).find((r) => r.job_id === second.id)!;
    expect(skipped.result!.skipped).toMatch(
      new RegExp(`previous run ${first.id} of schedule noop-overlap is still active`),
    );
    // Once the first has finished, the next run goes ahead.
    const third = await addScheduledRun(s, Date.now(), { sleepMs: 0 });
    await waitUntil(
      async () => (await runsOf(s.id)).some((r) => r.job_id === third.id && r.outcome === 'succeeded'),
      10_000,
      'third run',
    );
  });

  it('catchUp none skips a run missed while down; catchUp latest runs it once', async () => {
    const tenMinutesAgo = Date.now() - 10 * 60_000;
    const missed = await addScheduledRun(schedules[1]!, tenMinutesAgo, {});
    const caughtUp = await addScheduledRun(schedules[2]!, tenMinutesAgo, {});
    await waitUntil(
      async () => (await runsOf('noop-none')).length > 0 && (await runsOf('noop-latest')).length > 0,
      10_000,
      'both runs',
    );
    expect(await runsOf('noop-none')).toEqual([
      {
        job_id: missed.id,
        outcome: 'skipped',
        result: { skipped: expect.stringMatching(/^missed by 6\d\ds .*catchUp: none/) },
      },
    ]);
    expect(await runsOf('noop-latest')).toEqual([
      { job_id: caughtUp.id, outcome: 'succeeded', result: { sleptMs: 0 } },
    ]);
  });

  it('the watchdog repairs a schedule whose next run is past with no job waiting', async () => {
    const queue = rt.queues.get('noop');
    const before = await queue.getJobScheduler('noop-none');
    // A lost write: the pending run vanishes from Redis behind BullMQ's back.
    const jobId = `repeat:noop-none:${before!.next}`;
    expect(await queue.getJob(jobId)).toBeDefined();
    const redis = rt.queues.connection;
    await redis.zrem(`${rt.config.redis.prefix}:noop:delayed`, jobId);
    await redis.del(`${rt.config.redis.prefix}:noop:${jobId}`);
    expect(await queue.getJob(jobId)).toBeUndefined();
    // Nothing to repair while the run is not yet due.
    expect(await rt.scheduler.watchdog(Date.now())).toEqual([]);
    // Hours later, with the run gone, it is repaired: a scheduler and a pending run again.
    expect(await rt.scheduler.watchdog(before!.next! + 3600_000)).toEqual(['noop-none']);
    const after = await queue.getJobScheduler('noop-none');
    expect(await queue.getJob(`repeat:noop-none:${after!.next}`)).toBeDefined();
    expect((await queue.getDelayed()).filter((j) => j.repeatJobKey === 'noop-none')).toHaveLength(1);
  });

  it('a schedule removed from the code is removed from Redis', async () => {
    const fewer = resolveSchedules(schedules.slice(0, 2), rt.registry);
    const result = await new Scheduler(rt.queues, rt.registry, fewer, rt.logger).sync();
    expect(result.removed).toEqual(['noop/noop-latest']);
    const ids = (await rt.queues.get('noop').getJobSchedulers(0, -1)).map((s) => s.key).sort();
    expect(ids).toEqual(['noop-none', 'noop-overlap']);
    expect((await rt.queues.get('noop').getDelayed()).some((j) => j.repeatJobKey === 'noop-latest')).toBe(false);
  });

  it('rejects a schedule with a bad payload, cron or zone, naming it', () => {
    const bad = (s: Partial<Schedule>) => () =>
      resolveSchedules([{ id: 'x', job: 'noop', cron: '0 2 * * *', tz: 'UTC', ...s }], rt.registry);
    expect(bad({ payload: { sleepMs: 'long' } })).toThrow(/schedule "x" payload.sleepMs: /);
    expect(bad({ cron: '0 25 * * *' })).toThrow(/schedule "x" cron: cron hour value "25"/);
    expect(bad({ tz: 'Asia/Dacca_' })).toThrow(/schedule "x" tz: "Asia\/Dacca_" is not an IANA time zone/);
    expect(bad({ job: 'vacuum-everything' })).toThrow(/schedule "x" job: no job "vacuum-everything"/);
  });
});
