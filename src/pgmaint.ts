// The composition root: a runtime with pgmaint's own jobs (jobs/) and schedules
// (schedules/), which the runner itself never imports.
import { jobs } from '../jobs/index.ts';
import { defaultSchedules } from '../schedules/index.ts';
import type { Config } from './core/config.ts';
import { resolveJobs, Runtime, type RuntimeOptions } from './runner/runtime.ts';

export function createRuntime(opts: Partial<RuntimeOptions> = {}): Runtime {
  return Runtime.create({ ...opts, jobs: opts.jobs ?? jobs, schedules: opts.schedules ?? defaultSchedules });
}

/** Refuses a config whose jobs or schedules sections are wrong, without connecting to anything. */
export function checkJobsAndSchedules(config: Config): void {
  resolveJobs(config, jobs, defaultSchedules);
}
