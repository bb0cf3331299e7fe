// The partition part of the health reading: each policy's table (runway, DEFAULT rows),
// and the partitions the retention journal holds outside their parent on every target.
// The journal is the record of what retention took out, not the config: a run killed
// mid-way whose policy was then removed leaves partitions that no run will finish, and
// they are still reported, under their parent's name.
import { DateTime } from 'luxon';
import type { PartitionPolicy } from '../core/partition-policy.ts';
import { quoteQualified } from '../core/sql.ts';
import { readParent } from '../partitions/catalog.ts';
import { catalogPlace, openEntries } from '../partitions/retention-journal.ts';
import type { Runtime } from '../runner/runtime.ts';
import { withinTargetDeadline } from './target-deadline.ts';

export interface PartitionHealth {
  target: string;
  table: string;
  /** Seconds from now to the end of the contiguous partitions that cover now (0: now is not covered). */
  runwaySeconds: number | null;
  /** Rows in the DEFAULT partition, counted up to DEFAULT_ROWS_CAP. */
  defaultRows: number | null;
  /** Partitions taken out of the parent by a retention run that is no longer running, and still
   * outside it (the retention journal's open entries, whether or not a policy still names the parent). */
  unfinishedDetaches: number | null;
  unfinishedPartitions?: string[];
  /** A partition policy names this table; false: only the retention journal does (its policy was removed). */
  policy: boolean;
  error?: string;
}

export const DEFAULT_ROWS_CAP = 100_000;

const unreadRow = (target: string, table: string) => ({
  target,
  table,
  runwaySeconds: null,
  defaultRows: null,
  unfinishedDetaches: null,
});

async function partitionHealth(rt: Runtime, policy: PartitionPolicy, now: number): Promise<PartitionHealth> {
  const out: PartitionHealth = {
    target: policy.target,
    table: policy.table,
    runwaySeconds: null,
    defaultRows: null,
    unfinishedDetaches: null,
    policy: true,
  };
  const client = await rt.connections.pool(policy.target, 'monitor').connect();
  try {
    await client.query(`set statement_timeout = '10s'; set timezone = 'UTC'`);
    const parent = await readParent(client, policy);
    const ranges = parent.partitions.filter((p) => !p.isDefault && !p.detachPending && p.from && p.to);
    const at = DateTime.fromMillis(now);
    let cover = ranges.find((p) => p.from! <= at && at < p.to!);
    let end = cover?.to ?? null;
    while (cover) {
      cover = ranges.find((p) => end && p.from!.equals(end));
      if (cover) end = cover.to;
    }
    out.runwaySeconds = end ? Math.max(0, Math.round((end.toMillis() - now) / 1000)) : 0;
    const def = parent.partitions.find((p) => p.isDefault);
    if (def) {
      const { rows } = await client.query<{ n: number }>(
        `select count(*)::int as n from (select 1 from ${quoteQualified(def.schema, def.name)} limit ` +
          `${DEFAULT_ROWS_CAP}) s`,
      );
      out.defaultRows = rows[0]!.n;
    } else out.defaultRows = 0;
  } catch (err) {
    out.error = (err as Error).message;
  } finally {
    client.release();
  }
  return out;
}

/**
 * One target's rows, read one after another on one session (a reading goes through the
 * fleet target by target: health.ts): its policies, in configuration order, each with the
 * partitions a stranded journal entry left outside its parent, then the journal's parents
 * that no policy names. Each read is bounded (targetDeadlineMs) and never throws.
 */
export async function readTargetPartitions(
  rt: Runtime,
  target: string,
  now: number,
  runningRetention: Set<string>,
  errors: Record<string, string>,
  describeError: (err: unknown) => string,
  targetDeadlineMs: number,
): Promise<PartitionHealth[]> {
  const rows: PartitionHealth[] = [];
  for (const p of rt.config.partitions.filter((q) => q.target === target))
    rows.push(
      await withinTargetDeadline(partitionHealth(rt, p, now), target, targetDeadlineMs).catch(
        (err: Error): PartitionHealth => ({ ...unreadRow(target, p.table), policy: true, error: err.message }),
      ),
    );
  const stranded = await withinTargetDeadline(
    strandedPartitions(rt, target, runningRetention),
    target,
    targetDeadlineMs,
  ).catch((err) => {
    errors[`journal:${target}`] = describeError(err);
    return undefined;
  });
  if (!stranded) return rows;
  for (const row of rows) {
    row.unfinishedPartitions = stranded.get(row.table) ?? [];
    row.unfinishedDetaches = row.unfinishedPartitions.length;
    stranded.delete(row.table);
  }
  for (const [table, list] of stranded)
    rows.push({
      target,
      table,
      runwaySeconds: null,
      defaultRows: null,
      unfinishedDetaches: list.length,
      unfinishedPartitions: list,
      policy: false,
    });
  return rows;
}

/** The rows of a target that could not be reached: its policies, unread, saying why. */
export function unreachablePartitions(rt: Runtime, target: string, why: string): PartitionHealth[] {
  return rt.config.partitions
    .filter((p) => p.target === target)
    .map((p) => ({ ...unreadRow(target, p.table), policy: true, error: `target ${target} is unreachable: ${why}` }));
}

/** Every target's rows as one list: the policies in configuration order, then the journals' other parents. */
export function fleetPartitions(rt: Runtime, byTarget: Map<string, PartitionHealth[]>): PartitionHealth[] {
  const order = new Map(rt.config.partitions.map((p, i) => [`${p.target}\0${p.table}`, i]));
  const rows = [...rt.config.targets.keys()].flatMap((t) => byTarget.get(t) ?? []);
  const policyRows = rows.filter((r) => r.policy);
  policyRows.sort((a, b) => order.get(`${a.target}\0${a.table}`)! - order.get(`${b.target}\0${b.table}`)!);
  return [...policyRows, ...rows.filter((r) => !r.policy)];
}

/**
 * By parent ("schema.table", as the journal names it): the partitions that sit outside it
 * (detached, or with a detach pending) under an open journal entry of a run no worker
 * holds now. An entry whose partition was dropped or put back since strands nothing.
 */
async function strandedPartitions(
  rt: Runtime,
  target: string,
  runningRetention: Set<string>,
): Promise<Map<string, string[]>> {
  const client = await rt.connections.pool(target, 'monitor').connect();
  try {
    await client.query(`set statement_timeout = '10s'`);
    const byParent = new Map<string, string[]>();
    for (const e of await openEntries(client)) {
      // A journal entry of a run still going is work in progress.
      if (runningRetention.has(e.jobId)) continue;
      const place = await catalogPlace(client, e);
      if (place === 'missing' || place === 'attached') continue;
      byParent.set(e.parent, [...(byParent.get(e.parent) ?? []), `${e.partitionSchema}.${e.partitionName}`]);
    }
    return byParent;
  } finally {
    client.release();
  }
}
