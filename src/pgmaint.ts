// The composition root: a runtime with pgmaint's own jobs (jobs/) and schedules
// (schedules/), which the runner itself never imports.
import { jobs } from '../jobs/index.ts';
import { defaultSchedules } from '../schedules/index.ts';
import { Runtime, type RuntimeOptions } from './runner/runtime.ts';

export function createRuntime(opts: Partial<RuntimeOptions> = {}): Runtime {
  return Runtime.create({ ...opts, jobs: opts.jobs ?? jobs, schedules: opts.schedules ?? defaultSchedules });
}
