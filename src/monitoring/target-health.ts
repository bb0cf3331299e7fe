// Whether each target can be reached: the first part of a reading that touches the
// targets. One session per target, within the readings' share of its cluster's
// connection budget; a target that cannot be reached is marked, with its error, and
// the parts that would read it (partitions, journals, index leftovers) pass it by, so
// one target down never blinds the readings of the others.
import type pg from 'pg';
import { coerceError, describeError, errorCode, INTERNAL_CODE } from '../core/errors.ts';
import { attemptScope } from '../runner/budgeted-pool.ts';
import type { Runtime } from '../runner/runtime.ts';
import { TargetDeadlineError, withinTargetDeadline } from './target-deadline.ts';

/** Whether a target could be reached in this reading: a session opened and answered. */
export interface TargetHealth {
  target: string;
  cluster: string;
  reachable: boolean;
  /** Why not: the connection's error (refused, timed out, too many clients, …). */
  error?: string;
  /** Its stable code (src/core/errors.ts): PG_<SQLSTATE> (PG_53300 too many clients, PG_3D000 no such
   * database, …), the system's errno (ECONNREFUSED, …), TIMEOUT or UNREACHABLE; alerts group on it. */
  code?: string;
}

/** Errors that say the server itself did not answer (rather than this database or role refusing). */
const NO_ANSWER = new Set(['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

function serverDidNotAnswer(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return (typeof code === 'string' && NO_ANSWER.has(code)) || /timeout expired/i.test((err as Error)?.message ?? '');
}

/** The code failed runs are recorded under; the driver's own timeouts are plain errors: TIMEOUT. */
function codeOf(err: unknown): string {
  const code = errorCode(err);
  if (code !== INTERNAL_CODE) return code;
  return /timeout/i.test((err as Error)?.message ?? '') ? 'TIMEOUT' : 'UNREACHABLE';
}

/**
 * `select 1` on the target; never throws. Bounded as every part of a target's reading is
 * (`deadlineMs`, target-deadline.ts): a target that accepts and never answers costs the
 * reading that much, and is marked TIMEOUT. The deadline counts the connection attempt and
 * the query, not the wait for a reading session in the budget's line: a share busy with
 * other readings says nothing of the server, and a first target that timed out in the line
 * marked its whole cluster down. The session goes back idle for the reads that follow.
 */
async function probe(rt: Runtime, name: string, deadlineMs: number): Promise<TargetHealth & { serverDown?: boolean }> {
  const cluster = rt.config.targets.get(name)!.cluster;
  let attempting!: () => void;
  const attempt = new Promise<void>((resolve) => (attempting = resolve));
  const checkout = attemptScope.run(attempting, () => rt.connections.pool(name, 'monitor').connect());
  // An idle session needs no attempt; nor one connected for another checkout (then pg's own connect timeout bounds it).
  checkout.then(attempting, attempting);
  // A session whose query failed is discarded, as pool.query does.
  const answered = checkout.then((client) =>
    client.query({ text: 'select 1', query_timeout: deadlineMs } as pg.QueryConfig).then(
      () => client.release(),
      (err: Error) => {
        client.release(err);
        throw err;
      },
    ),
  );
  try {
    await attempt;
    await withinTargetDeadline(answered, name, deadlineMs);
    return { target: name, cluster, reachable: true };
  } catch (err) {
    answered.catch(() => undefined);
    if (err instanceof TargetDeadlineError)
      return {
        target: name,
        cluster,
        reachable: false,
        error: `did not answer within ${deadlineMs / 1000} s`,
        code: 'TIMEOUT',
        serverDown: true,
      };
    return {
      target: name,
      cluster,
      reachable: false,
      error: describeError(coerceError(err)),
      code: codeOf(err),
      serverDown: serverDidNotAnswer(err),
    };
  }
}

/**
 * Every configured target, in configuration order. Per cluster, the first target is
 * tried alone: when its server does not answer at all, the cluster's other databases are
 * marked with that error without a try each (one connection timeout, not one per database).
 * `then` reads the rest of a reachable target right after its probe, on the same session,
 * and a cluster's targets are taken as many at once as its readings' share: each target
 * opens one session per reading, not one per part (at 1,000 targets, parts read side by
 * side closed each other's idle sessions, and a reading opened three or four per target).
 */
export async function readTargets(
  rt: Runtime,
  deadlineMs: number,
  then: (target: string) => Promise<void> = async () => undefined,
): Promise<TargetHealth[]> {
  const byCluster = new Map<string, string[]>();
  for (const t of rt.config.targets.values()) byCluster.set(t.cluster, [...(byCluster.get(t.cluster) ?? []), t.name]);
  const read = async (name: string) => {
    const health = await probe(rt, name, deadlineMs);
    if (health.reachable) await then(name);
    return health;
  };
  const results = await Promise.all(
    [...byCluster].map(async ([cluster, [first, ...rest]]): Promise<TargetHealth[]> => {
      const { serverDown, ...head } = await read(first!);
      if (!serverDown)
        return [head, ...(await inLanes(rest, rt.connections.cluster(cluster).readings.size, read))].map(withoutFlag);
      const error = `cluster ${cluster} did not answer (as for target ${first}): ${head.error}`;
      return [head, ...rest.map((target) => ({ target, cluster, reachable: false, error, code: head.code }))];
    }),
  );
  const byName = new Map(results.flat().map((t) => [t.target, t]));
  return [...rt.config.targets.keys()].map((t) => byName.get(t)!);
}

/** fn over items, at most `lanes` at once, results in the items' order. */
async function inLanes<T, R>(items: T[], lanes: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(lanes, items.length) }, lane));
  return out;
}

const withoutFlag = ({ serverDown: _, ...t }: TargetHealth & { serverDown?: boolean }): TargetHealth => t;

/** Unreachable targets with their errors, for the parts that pass them by. */
export function unreachableTargets(targets: TargetHealth[]): Map<string, string> {
  return new Map(targets.filter((t) => !t.reachable).map((t) => [t.target, t.error ?? 'unreachable']));
}
