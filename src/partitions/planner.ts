// Planning a parent's new partitions: which periods, from the current one through
// premake ahead and back over gaps to the oldest partition, no partition covers yet,
// decided on the catalog's bounds and the run's PeriodCalendar.
import { DateTime } from 'luxon';
import type pg from 'pg';
import type { PartitionPolicy } from '../core/partition-policy.ts';
import { quoteIdent, quoteLiteral, quoteQualified } from '../core/sql.ts';
import { boundMs, type ParentInfo, parseKeyValue } from './catalog.ts';
import { nextPeriod, PeriodCalendar, periodStart } from './periods.ts';

/** At most this many new partitions a run plans for one parent. */
export const MAX_NEW_PER_RUN = 1000;

export interface Period {
  from: DateTime;
  to: DateTime;
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

/** Upper bound of the newest partition, and the whole periods it lies ahead of now. */
export function runway(info: ParentInfo, policy: PartitionPolicy, calendar: PeriodCalendar) {
  const newest = info.partitions.filter((x) => boundMs(x, 'to') !== null).at(-1);
  const newestMs = newest ? boundMs(newest, 'to')! : null;
  return {
    runwayUntil: newestMs === null ? null : DateTime.fromMillis(newestMs, { zone: policy.timeZone }).toISO(),
    periodsAhead: newestMs === null ? 0 : calendar.countAhead(policy.interval, policy.timeZone, newestMs),
  };
}

/** The starts of the periods holding rows stranded in the parent's DEFAULT partition, if it has one. */
export async function strandedPeriods(
  client: pg.ClientBase,
  info: ParentInfo,
  policy: PartitionPolicy,
): Promise<DateTime[]> {
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
  return stranded;
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
