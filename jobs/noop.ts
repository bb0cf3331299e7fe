// noop: does nothing but wait; probes the pipeline end to end (health checks,
// the runner benchmark, fault drills) without touching a database.
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** How long the run lasts, in milliseconds. */
  sleepMs: z.number().int().min(0).max(3_600_000).default(0),
});

const job = defineJob({
  name: 'noop',
  description: 'Does nothing for sleepMs; a probe of queues, workers and history.',
  payload,
  defaults: { attempts: 3, backoffMs: 1000, timeoutMs: 3_600_000, concurrency: 4 },
  async handler(ctx, { sleepMs }) {
    if (sleepMs > 0) {
      await ctx.progress(0, `sleeping ${sleepMs} ms`);
      await sleep(sleepMs, undefined, { signal: ctx.signal });
      await ctx.progress(100, 'done');
    }
    return { sleptMs: sleepMs };
  },
});

export default job;

/** What a noop run returns (its result in the run history and the API). */
export type NoopResult = JobResult<typeof job>;
