// A target's partition policies as a run sees them: which parents it works on, the
// refusals for a payload's tables, and each policy's outcome, so that one failing
// policy does not stop the others.
import { classifyError, coerceError, describeError, GovernorDeferredError, PermanentJobError } from '../core/errors.ts';
import type { PartitionPolicy } from '../core/partition-policy.ts';

/** The policies of one target, optionally narrowed to some parents. */
export function policiesFor(
  ctx: { config: { partitions: PartitionPolicy[] } },
  target: string,
  tables?: string[],
): PartitionPolicy[] {
  const all = ctx.config.partitions.filter((p) => p.target === target);
  if (!tables) return all;
  const unknown = tables.filter((t) => !all.some((p) => p.table === t));
  if (unknown.length)
    throw new PermanentJobError(`tables: no partition policy for ${unknown.join(', ')} on target ${target}`, 'POLICY');
  return all.filter((p) => tables.includes(p.table));
}

/** Refusals for a payload's `tables`: each must have a policy on the target (with a
 * retention, for the retention job), checked when the job is asked for. */
export function tablesIssues(
  policies: PartitionPolicy[],
  target: string,
  tables: string[] | undefined,
  needRetention = false,
): { path: string; message: string }[] {
  const mine = policies.filter((p) => p.target === target && (!needRetention || p.retention));
  const known = mine.map((p) => p.table);
  return (tables ?? []).flatMap((t, i) =>
    known.includes(t)
      ? []
      : [
          {
            path: `tables.${i}`,
            message:
              `no partition policy${needRetention ? ' with a retention' : ''} for ${t} on target ${target} ` +
              `(known: ${known.join(', ') || 'none'})`,
          },
        ],
  );
}

/** A policy's failure, kept in its result so one policy does not stop the others. */
export interface PolicyOutcome {
  table: string;
  error?: string;
  retryable?: boolean;
}

export function recordPolicyError(result: PolicyOutcome, thrown: unknown): void {
  const err = coerceError(thrown);
  result.error = describeError(err);
  result.retryable = classifyError(err) === 'retryable';
}

/** A policy's end by an error: held by the load governor past its window, the run stopped
 * cleanly (every step done is journaled; the next run goes on from there); else its failure. */
export function recordPolicyEnd(result: PolicyOutcome & { skipped: { reason: string }[] }, thrown: unknown): void {
  if (thrown instanceof GovernorDeferredError) result.skipped.push({ reason: thrown.message });
  else recordPolicyError(result, thrown);
}

/** Fails the job at the end if any policy failed: retried only when every failure
 * is worth a retry (a lock timeout, say). */
export function throwIfPoliciesFailed(job: string, results: PolicyOutcome[]): void {
  const failed = results.filter((r) => r.error);
  if (!failed.length) return;
  const message = `${job} failed for ${failed.map((f) => `${f.table} (${f.error})`).join(', ')}`;
  if (failed.some((f) => !f.retryable)) throw new PermanentJobError(message);
  throw new Error(message);
}
