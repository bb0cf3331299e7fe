// create-partitions: keep a runway of future range partitions for every policy in
// the config file (`partitions:`), from the current period through `premake` periods
// ahead, filling gaps. Each partition is created as a plain table and ATTACHed, so
// the parent is held in SHARE UPDATE EXCLUSIVE and inserts never wait on the job; up
// to 20 partitions of a parent commit together. Rows stranded in the DEFAULT partition
// inside a new range move into it in the same transaction as the attach.
import { setTimeout as sleep } from 'node:timers/promises';
import { DateTime } from 'luxon';
import { z } from 'zod';
import { GovernorDeferredError, PermanentJobError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import type { PartitionPolicy } from '../src/core/partition-policy.ts';
import { qualifiedName, quoteQualified, withTransaction } from '../src/core/sql.ts';
import { type CreatedPartition, createPartitions, readTemplate } from '../src/partitions/attach.ts';
import { defaultsHoldingRows, type ParentInfo, readParent, readParents } from '../src/partitions/catalog.ts';
import { PARENT_LOCKED, withParentLock } from '../src/partitions/locks.ts';
import { PeriodCalendar } from '../src/partitions/periods.ts';
import { coveredByBoundaries, type Period, planMissing, runway, strandedPeriods } from '../src/partitions/planner.ts';
import {
  type PolicyOutcome,
  policiesFor,
  recordPolicyError,
  tablesIssues,
  throwIfPoliciesFailed,
} from '../src/partitions/policies.ts';

export const payload = z.object({
  target: targetField,
  /** Only these parents (schema.table); all of the target's policies when omitted. */
  tables: z.array(qualifiedName).optional(),
  /** Plan from this instant instead of the clock (backfills, tests). */
  now: z.iso.datetime({ offset: true }).optional(),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});

/**
 * New partitions attached in one transaction. Every commit that changes the parent's
 * partitions makes each session inserting into it rebuild its partition map, and the
 * application feels each rebuild (docs/benchmarks.md, live impact): one commit for a
 * parent's ten new partitions costs it one. Bounded, so that a first run of hundreds
 * holds a bounded number of locks at a time. A parent with a DEFAULT partition gets one
 * a commit: each attach scans and locks the DEFAULT, and queries reading it would wait
 * for the whole batch.
 */
const PARTITIONS_PER_COMMIT = 20;

export interface PolicyResult extends PolicyOutcome {
  created: CreatedPartition[];
  /** Upper bound of the newest partition, and whole periods it lies ahead of now. */
  runwayUntil: string | null;
  periodsAhead: number;
  defaultPartition: string | null;
  defaultRows: number | null;
  rowsMoved: number;
  skipped: { range?: string; reason: string }[];
}

const job = defineJob({
  name: 'create-partitions',
  description:
    'Creates future range partitions (premake ahead of now), fills gaps, moves rows out of the DEFAULT partition.',
  payload,
  defaults: { attempts: 3, backoffMs: 30_000, timeoutMs: 30 * 60_000, concurrency: 1 },
  deduplicate: true,
  checkConfig: (p, config) => tablesIssues(config.partitions, p.target, p.tables),
  async handler(ctx, p) {
    const policies = policiesFor(ctx, p.target, p.tables);
    const now = p.now ? DateTime.fromISO(p.now) : DateTime.now();
    // The whole target's state in one reading; only parents with work go further. At
    // steady state (nothing to create, empty DEFAULT partitions) that is the whole run.
    const snapshot = await readSnapshot(ctx, policies);
    const calendar = new PeriodCalendar(now);
    const steady = policies.map((policy, i) => steadyResult(policy, snapshot[i]!, now, calendar));
    const busy = steady.flatMap((r, i) => (r === NEEDS_WORK ? [i] : []));
    const results = steady as PolicyResult[];
    await ctx.progress(10, `${policies.length} parents read; ${busy.length} need work`);
    // Parents are independent: work on as many at once as the target's pool allows.
    let next = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: Math.min(ctx.target.poolSize, busy.length) }, async () => {
        while (next < busy.length) {
          const i = busy[next++]!;
          results[i] = await maintainPolicy(ctx, policies[i]!, now, calendar);
          if (++done % 10 === 0 || done === busy.length)
            await ctx.progress(10 + (90 * done) / busy.length, `${done}/${busy.length} parents with work done`);
        }
      }),
    );
    // A line for every parent that changed, failed or skipped something; one for the rest
    // (at a thousand parents, a line each would cost more than the whole reading).
    const isQuiet = (r: PolicyResult) => !r.error && !r.created.length && !r.skipped.length;
    const quiet = results.filter(isQuiet);
    for (const r of results.filter((x) => !isQuiet(x))) {
      await ctx.log(
        `${r.table}: ${
          r.error
            ? `FAILED: ${r.error}`
            : `created ${r.created.length}, runway until ${r.runwayUntil} (${r.periodsAhead} periods ahead), ` +
              `default partition rows ${r.defaultRows ?? 'n/a'}, moved ${r.rowsMoved}`
        }` +
          (r.skipped.length
            ? `; skipped: ${r.skipped.map((s) => `${s.range ?? ''} ${s.reason}`.trim()).join('; ')}`
            : ''),
      );
    }
    if (quiet.length) {
      const shortest = quiet.reduce((a, b) => (b.periodsAhead < a.periodsAhead ? b : a));
      await ctx.log(
        `${quiet.length} parent${quiet.length > 1 ? 's' : ''} already had their runway; the shortest: ` +
          `${shortest.table}, until ${shortest.runwayUntil} (${shortest.periodsAhead} periods ahead)`,
      );
    }
    await ctx.progress(100, `${results.filter((r) => !r.error).length}/${policies.length} policies done`);
    throwIfPoliciesFailed('create-partitions', results);
    return { policies: results };
  },
});

/** Deparsed partition bounds per target, kept across this process's runs (readParents). */
const knownBounds = new Map<string, Map<string, string>>();
const boundsOf = (target: string) => {
  if (!knownBounds.has(target)) knownBounds.set(target, new Map());
  return knownBounds.get(target)!;
};

/** Every parent's catalog state, read once on one connection (bounds printed in UTC). */
async function readSnapshot(ctx: JobContext, policies: PartitionPolicy[]) {
  if (!policies.length) return [];
  return ctx.withClient((client) =>
    withTransaction(
      client,
      async () => {
        await client.query(`set local timezone = 'UTC'`);
        const parents = await readParents(client, policies, { bounds: boundsOf(ctx.target.name) });
        const holding = await defaultsHoldingRows(
          client,
          parents.filter((x): x is ParentInfo => !(x instanceof Error)),
        );
        return parents.map((info) => ({
          info,
          defaultHasRows: !(info instanceof Error) && holding.has(info.oid),
        }));
      },
      'begin isolation level repeatable read read only',
    ),
  );
}

const NEEDS_WORK = Symbol('needs work');

/** The result of a parent that needs nothing, from the snapshot; or NEEDS_WORK. */
function steadyResult(
  policy: PartitionPolicy,
  { info, defaultHasRows }: { info: ParentInfo | PermanentJobError; defaultHasRows: boolean },
  now: DateTime,
  calendar: PeriodCalendar,
): PolicyResult | typeof NEEDS_WORK {
  const result = emptyResult(policy);
  if (info instanceof Error) {
    recordPolicyError(result, info);
    return result;
  }
  if (defaultHasRows) return NEEDS_WORK;
  const def = info.partitions.find((x) => x.isDefault);
  if (def) {
    result.defaultPartition = `${def.schema}.${def.name}`;
    result.defaultRows = 0;
  }
  // The common case at fleet scale, decided on numbers alone.
  if (coveredByBoundaries(info, policy, calendar)) return Object.assign(result, runway(info, policy, calendar));
  const plan = planMissing(info, policy, now, [], calendar);
  if (plan.missing.length) return NEEDS_WORK;
  result.skipped.push(...plan.skipped);
  return Object.assign(result, runway(info, policy, calendar));
}

function emptyResult(policy: PartitionPolicy): PolicyResult {
  return {
    table: policy.table,
    created: [],
    runwayUntil: null,
    periodsAhead: 0,
    defaultPartition: null,
    defaultRows: null,
    rowsMoved: 0,
    skipped: [],
  };
}

async function maintainPolicy(
  ctx: JobContext,
  policy: PartitionPolicy,
  now: DateTime,
  calendar: PeriodCalendar,
): Promise<PolicyResult> {
  const result = emptyResult(policy);
  try {
    const outcome = await withParentLock(ctx.pool, policy.table, async (client) => {
      let info = await readParent(client, policy);
      const def = info.partitions.find((x) => x.isDefault);
      // The periods of rows stranded in the DEFAULT partition are planned too.
      const plan = planMissing(info, policy, now, await strandedPeriods(client, info, policy), calendar);
      result.skipped.push(...plan.skipped);
      const template = plan.missing.length ? await readTemplate(client, info) : undefined;
      const perCommit = def ? 1 : PARTITIONS_PER_COMMIT;
      // A period that cannot be made (its name taken, DEFAULT rows under "fail") fails
      // alone: the others still get their partitions, and the policy fails at the end.
      const failures: PermanentJobError[] = [];
      const attempt = async (periods: Period[]) => {
        try {
          result.created.push(
            ...(await withLockRetry(ctx, () => createPartitions(client, info, template!, policy, periods))),
          );
          return true;
        } catch (err) {
          if (!(err instanceof PermanentJobError)) throw err;
          if (periods.length === 1) failures.push(err);
          return false;
        }
      };
      let logged = 0;
      for (let i = 0; i < plan.missing.length; i += perCommit) {
        ctx.signal.throwIfAborted();
        const batch = plan.missing.slice(i, i + perCommit);
        // A unit: one commit of new partitions (one partition where a DEFAULT partition is scanned).
        await ctx.governor.gate(`${policy.table}: partitions from ${batch[0]!.from.toISO()}`);
        // A batch rolled back by one bad period is made again one period a commit.
        if (!(await attempt(batch)) && batch.length > 1) for (const period of batch) await attempt([period]);
        if (result.created.length >= logged + 10 || (logged && i + perCommit >= plan.missing.length)) {
          logged = result.created.length;
          await ctx.log(`${policy.table}: created ${logged}/${plan.missing.length}`);
        }
      }
      if (failures.length) throw new PermanentJobError(failures.map((f) => f.message).join('; '));
      if (plan.missing.length) info = await readParent(client, policy);
      if (def) {
        result.defaultPartition = `${def.schema}.${def.name}`;
        result.defaultRows = Number(
          (await client.query(`select count(*) as n from ${quoteQualified(def.schema, def.name)}`)).rows[0].n,
        );
      }
      Object.assign(result, runway(info, policy, calendar));
    });
    if (outcome === 'locked') result.skipped.push({ reason: PARENT_LOCKED });
  } catch (thrown) {
    // Held past its window: what is made stays made; the next run makes the rest.
    if (thrown instanceof GovernorDeferredError) result.skipped.push({ reason: thrown.message });
    else recordPolicyError(result, thrown);
  }
  result.rowsMoved = result.created.reduce((n, c) => n + c.movedRows, 0);
  return result;
}

/** Lock timeouts are retried with backoff (1, 2, 4 s), then fail loudly. */
async function withLockRetry<T>(ctx: JobContext, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if ((err as { code?: string }).code !== '55P03' || attempt >= 4) throw err;
      await ctx.log(`lock timeout (attempt ${attempt}); retrying in ${2 ** (attempt - 1)} s`);
      await sleep(1000 * 2 ** (attempt - 1), undefined, { signal: ctx.signal });
    }
  }
}

export default job;

/** What a create-partitions run returns (its result in the run history and the API). */
export type CreatePartitionsResult = JobResult<typeof job>;
