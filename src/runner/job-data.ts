// What a job's data must be before a worker trusts it: {payload: {…}, trigger?, scheduleId?}.
// A job written behind the API (Bull Board's "add", a script on Redis) meets these checks too.
import { MAIN_TARGET } from '../core/constants.ts';
import { PayloadError } from '../core/errors.ts';
import type { JobData } from './queues.ts';

/** The target's name when it is configured; a metric or history label never carries raw input. */
export function knownTarget(config: { targets: Map<string, unknown> }, target: unknown): string {
  if (target === undefined) return MAIN_TARGET;
  return typeof target === 'string' && config.targets.has(target) ? target : '(invalid)';
}

const JOB_DATA_KEYS = ['payload', 'trigger', 'scheduleId'];

/** Refuses job data that is not {payload: {…}, trigger?, scheduleId?}, naming the key. */
export function checkJobData(data: unknown): asserts data is JobData {
  if (!data || typeof data !== 'object' || Array.isArray(data))
    throw new PayloadError([{ path: '(job data)', message: 'must be an object {"payload": {…}}' }]);
  const unknown = Object.keys(data).filter((k) => !JOB_DATA_KEYS.includes(k));
  const issues = unknown.map((k) => ({
    path: k,
    message: `unknown key in job data (known: ${JOB_DATA_KEYS.join(', ')}; payload fields go under "payload")`,
  }));
  const d = data as Record<string, unknown>;
  if (!d.payload || typeof d.payload !== 'object' || Array.isArray(d.payload))
    issues.push({
      path: 'payload',
      message: 'is required: an object of the job\'s payload fields, e.g. {"payload": {}}',
    });
  if (d.trigger !== undefined && typeof d.trigger !== 'string')
    issues.push({ path: 'trigger', message: 'must be a string' });
  if (issues.length) throw new PayloadError(issues);
}
