// What one target's part of a health reading may take (connect and statements): a target
// that hangs rather than refuses is reported as not answering, and the reading of the
// others goes on, so a slow target never delays the snapshot beyond this.
import { ServiceUnavailableError } from '../core/errors.ts';
import { settleWithin } from '../runner/redis-failure.ts';

export const TARGET_READ_DEADLINE_MS = 10_000;

/** A target's part that did not settle within its deadline. */
export class TargetDeadlineError extends ServiceUnavailableError {
  override name = 'TargetDeadlineError';
}

export function withinTargetDeadline<T>(p: Promise<T>, target: string, ms: number): Promise<T> {
  return settleWithin(p, ms, () => new TargetDeadlineError(`target ${target} did not answer within ${ms / 1000} s`));
}
