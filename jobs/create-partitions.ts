// create-partitions: keep a runway of future range partitions for every policy in
// the config file (`partitions:`), from the current period through `premake` periods
// ahead, filling gaps. Each partition is created as a plain table and ATTACHed, so
// the parent is held in SHARE UPDATE EXCLUSIVE and inserts never wait on the job; up
// to 20 partitions of a parent commit together. Rows stranded in the DEFAULT partition
// inside a new range move into it in the same transaction as the attach.
import { setTimeout as sleep } from 'node:timers/promises';
import { DateTime } from 'luxon';
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from '../src/core/errors.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import type { PartitionPolicy } from '../src/core/partition-policy.ts';
import { qualifiedName, quoteIdent, quoteLiteral, quoteQualified, withTransaction } from '../src/core/sql.ts';
import {
  boundLiteral,
  boundMs,
  defaultsHoldingRows,
  type ParentInfo,
  parseKeyValue,
  readParent,
  readParents,
} from '../src/partitions/catalog.ts';
import { PARENT_LOCKED, withParentLock } from '../src/partitions/locks.ts';
import { nextPeriod, PeriodCalendar, partitionName, periodStart } from '../src/partitions/periods.ts';
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
});

const MAX_NEW_PER_RUN = 1000;
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

interface Created {
  name: string;
  from: string;
  to: string;
  movedRows: number;
}

export interface PolicyResult extends PolicyOutcome {
  created: Created[];
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
  const client = await ctx.pool.connect();
  try {
    return await withTransaction(
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
    );
  } finally {
    client.release();
  }
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

/**
 * True when the parent's partitions run without a gap from its oldest, no later than
 * the current period, through premake periods ahead, each bound on a period boundary:
 * then planMissing would find nothing missing and nothing to skip.
 */
export function coveredByBoundaries(info: ParentInfo, policy: PartitionPolicy, calendar: PeriodCalendar): boolean {
  const { interval, timeZone: zone } = policy;
  const ranged = info.partitions.filter((x) => !x.isDefault && !x.detachPending);
  if (!ranged.length) return false;
  let reach = boundMs(ranged[0]!, 'from');
  if (reach === null || reach > calendar.current(interval, zone)) return false;
  for (const x of ranged) {
    const [from, to] = [boundMs(x, 'from'), boundMs(x, 'to')];
    if (from !== reach || to === null) return false;
    if (!calendar.isBoundary(interval, zone, from) || !calendar.isBoundary(interval, zone, to)) return false;
    reach = to;
  }
  return reach >= calendar.after(interval, zone, policy.premake + 1);
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

/** Upper bound of the newest partition, and the whole periods it lies ahead of now. */
function runway(info: ParentInfo, policy: PartitionPolicy, calendar: PeriodCalendar) {
  const newest = info.partitions.filter((x) => boundMs(x, 'to') !== null).at(-1);
  const newestMs = newest ? boundMs(newest, 'to')! : null;
  return {
    runwayUntil: newestMs === null ? null : DateTime.fromMillis(newestMs, { zone: policy.timeZone }).toISO(),
    periodsAhead: newestMs === null ? 0 : calendar.countAhead(policy.interval, policy.timeZone, newestMs),
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
      // The periods of rows stranded in the DEFAULT partition are planned too.
      const def = info.partitions.find((x) => x.isDefault);
      const stranded: DateTime[] = [];
      if (def) {
        const col = quoteIdent(policy.column);
        const local =
          info.keyType === 'timestamptz' ? `${col} at time zone ${quoteLiteral(policy.timeZone)}` : `${col}::timestamp`;
        const { rows } = await client.query<{ p: string }>(
          `select distinct date_trunc('${policy.interval}', ${local})::text as p from ` +
            `${quoteQualified(def.schema, def.name)} order by 1 limit ${MAX_NEW_PER_RUN}`,
        );
        // date_trunc gave local wall-clock period starts.
        for (const r of rows) stranded.push(parseKeyValue(r.p, 'timestamp', policy.timeZone));
      }
      const plan = planMissing(info, policy, now, stranded, calendar);
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
    recordPolicyError(result, thrown);
  }
  result.rowsMoved = result.created.reduce((n, c) => n + c.movedRows, 0);
  return result;
}

interface Period {
  from: DateTime;
  to: DateTime;
}

/** Periods from the current one through premake ahead, plus gaps back to the oldest
 * partition, that no existing partition covers. A period partly covered by a
 * partition with other bounds is skipped with the reason; existing bounds win.
 * Periods holding rows stranded in the DEFAULT partition are planned too. The work is
 * on epoch milliseconds and the calendar's boundaries: luxon, at every period and
 * bound, cost the worker more CPU than the run's statements cost the server. */
export function planMissing(
  info: ParentInfo,
  policy: PartitionPolicy,
  now: DateTime,
  stranded: DateTime[] = [],
  calendar = new PeriodCalendar(now),
): { missing: Period[]; skipped: { range: string; reason: string }[] } {
  const { interval, timeZone: zone } = policy;
  const ranged = info.partitions
    .flatMap((x) => {
      const [from, to] = [boundMs(x, 'from'), boundMs(x, 'to')];
      return !x.isDefault && !x.detachPending && from !== null && to !== null ? [{ x, from, to }] : [];
    })
    .sort((a, b) => a.from - b.from);
  const current = calendar.current(interval, zone);
  const end = calendar.after(interval, zone, policy.premake + 1);
  const oldest = ranged[0]?.from;
  // Each period with its upper bound: the next boundary.
  const contiguous = calendar.boundaries(
    interval,
    zone,
    oldest !== undefined && oldest < current ? oldest : current,
    end,
  );
  const periods = contiguous.slice(0, -1).map((from, i) => ({ from, to: contiguous[i + 1]! }));
  for (const s of stranded) {
    if (s.toMillis() >= contiguous[0]! && s.toMillis() < end) continue;
    const from = periodStart(s, interval);
    periods.push({ from: from.toMillis(), to: nextPeriod(from, interval).toMillis() });
  }
  periods.sort((a, b) => a.from - b.from);
  const at = (ms: number) => DateTime.fromMillis(ms, { zone });
  const missing: Period[] = [];
  const skipped: { range: string; reason: string }[] = [];
  // Range partitions never overlap: sorted by lower bound they are sorted by upper bound
  // too, so one pass over both lists finds each period's overlapping partitions.
  let first = 0;
  for (const { from, to } of periods) {
    if (missing.length >= MAX_NEW_PER_RUN) break;
    while (first < ranged.length && ranged[first]!.to <= from) first++;
    const overlapping: typeof ranged = [];
    for (let j = first; j < ranged.length && ranged[j]!.from < to; j++) overlapping.push(ranged[j]!);
    if (!overlapping.length) missing.push({ from: at(from), to: at(to) });
    else if (!coveredByUnion(overlapping, from, to))
      skipped.push({
        range: `[${at(from).toISO()}, ${at(to).toISO()})`,
        reason:
          `partly covered by ${overlapping.map(({ x }) => `${x.schema}.${x.name}`).join(', ')}; existing bounds ` +
          `are kept`,
      });
  }
  return { missing, skipped };
}

/** Whether `parts`, sorted by lower bound, cover [from, to) without a hole. */
function coveredByUnion(parts: { from: number; to: number }[], from: number, to: number): boolean {
  let reach = from;
  for (const x of parts) {
    if (x.from > reach) return false;
    if (x.to > reach) reach = x.to;
  }
  return reach >= to;
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

/** What every new partition of a parent copies: read once per run and policy. */
interface ParentTemplate {
  identityColumns: string[];
  /** Set when the parent's owner is not the role we run as. */
  owner: string | null;
  grants: { grantee: string | null; privilege: string }[];
  /** Quoted column list for moving rows out of the DEFAULT partition. */
  columns: string;
}

async function readTemplate(client: pg.ClientBase, info: ParentInfo): Promise<ParentTemplate> {
  const { rows } = await client.query(
    `select (select coalesce(array_agg(attname::text order by attnum), '{}') from pg_attribute
              where attrelid = $1 and attidentity <> '' and not attisdropped) as identity,
            (select string_agg(quote_ident(attname), ', ' order by attnum) from pg_attribute where attrelid = $1 and
              attnum > 0 and not attisdropped and attgenerated = '') as columns,
            (select case when pg_get_userbyid(relowner) = current_user then null else pg_get_userbyid(relowner) end
              from pg_class where oid = $1) as owner,
            (select coalesce(json_agg(json_build_object('grantee', case when a.grantee = 0 then null else
              pg_get_userbyid(a.grantee) end, 'privilege', a.privilege_type)), '[]')
               from pg_class c, aclexplode(c.relacl) a where c.oid = $1 and a.grantee <> c.relowner) as grants`,
    [info.oid],
  );
  const r = rows[0];
  return { identityColumns: r.identity, owner: r.owner, grants: r.grants, columns: r.columns };
}

/** Creates and attaches a parent's partitions for these periods, in one transaction. */
async function createPartitions(
  client: pg.ClientBase,
  info: ParentInfo,
  template: ParentTemplate,
  policy: PartitionPolicy,
  periods: Period[],
): Promise<Created[]> {
  return withTransaction(client, async () => {
    await client.query(`set local lock_timeout = '${policy.lockTimeout}'`);
    const created: Created[] = [];
    for (const { from, to } of periods) created.push(await addPartition(client, info, template, policy, from, to));
    return created;
  });
}

/** One partition: its table made like the parent, stranded DEFAULT rows moved in, attached. */
async function addPartition(
  client: pg.ClientBase,
  info: ParentInfo,
  template: ParentTemplate,
  policy: PartitionPolicy,
  from: DateTime,
  to: DateTime,
): Promise<Created> {
  const parent = quoteQualified(info.schema, info.table);
  const name = partitionName(info.table, from, policy.interval);
  const part = quoteQualified(info.schema, name);
  const col = quoteIdent(policy.column);
  const lo = boundLiteral(from, info.keyType);
  const hi = boundLiteral(to, info.keyType);
  const def = info.partitions.find((x) => x.isDefault);
  const setup = [
    `create table ${part} (like ${parent} including all)`,
    // The parent's identity generates values for rows inserted through it; a copied
    // identity on the partition would be a second, diverging sequence.
    ...template.identityColumns.map((c) => `alter table ${part} alter column ${quoteIdent(c)} drop identity`),
    ...(template.owner ? [`alter table ${part} owner to ${quoteIdent(template.owner)}`] : []),
    ...template.grants.map((g) => `grant ${g.privilege} on ${part} to ${g.grantee ? quoteIdent(g.grantee) : 'public'}`),
  ];
  const attach = `alter table ${parent} attach partition ${part} for values from (${lo}) to (${hi})`;
  // One round trip for the statements that need no answer; the attach joins them when
  // there is no DEFAULT partition to move rows out of first.
  await client.query([...setup, ...(def ? [] : [attach])].join(';\n')).catch((err) => {
    if ((err as { code?: string }).code === '42P07')
      throw new PermanentJobError(
        `${info.schema}.${name} already exists and is not a partition of ${policy.table}; rename it or attach it`,
      );
    throw err;
  });
  let movedRows = 0;
  if (def) {
    const where = `${col} >= ${lo} and ${col} < ${hi}`;
    const dflt = quoteQualified(def.schema, def.name);
    const stranded = Number((await client.query(`select count(*) as n from ${dflt} where ${where}`)).rows[0].n);
    if (stranded > 0) {
      if (policy.defaultRows === 'fail') {
        throw new PermanentJobError(
          `${stranded} rows of ${def.schema}.${def.name} fall in [${from.toISO()}, ${to.toISO()}); policy ` +
            `defaultRows is "fail", so nothing was moved`,
        );
      }
      const cols = template.columns;
      const moved = await client.query(
        `with gone as (delete from ${dflt} where ${where} returning ${cols}) insert into ${part} (${cols}) select ` +
          `${cols} from gone`,
      );
      movedRows = moved.rowCount ?? 0;
      if (movedRows !== stranded) throw new Error(`moved ${movedRows} rows but counted ${stranded}; rolled back`);
    }
    await client.query(attach);
  }
  return { name: `${info.schema}.${name}`, from: from.toISO()!, to: to.toISO()!, movedRows };
}

export default job;

/** What a create-partitions run returns (its result in the run history and the API). */
export type CreatePartitionsResult = JobResult<typeof job>;
