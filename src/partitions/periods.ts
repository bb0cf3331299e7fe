// Period arithmetic in a policy's zone: period starts, the next period, partition
// names, and the PeriodCalendar a run shares across its parents.
import { DateTime } from 'luxon';
import type { PartitionInterval } from '../core/partition-policy.ts';

/** Start of the period containing `t`, in the policy's zone. */
export function periodStart(t: DateTime, interval: PartitionInterval): DateTime {
  return t.startOf(interval, { useLocaleWeeks: false });
}

export function nextPeriod(t: DateTime, interval: PartitionInterval): DateTime {
  const unit = { hour: 'hours', day: 'days', week: 'weeks', month: 'months', quarter: 'quarters', year: 'years' }[
    interval
  ];
  // Periods are stepped from the period start: hours in absolute time, the rest in
  // local calendar time, so each lower bound is exactly the previous upper bound.
  return periodStart(t.plus({ [unit]: 1 }), interval);
}

export function partitionName(table: string, from: DateTime, interval: PartitionInterval): string {
  const suffix = {
    // Hours are named in UTC: a local name would repeat on the fall-back night.
    hour: from.toUTC().toFormat("yyyyMMdd'_'HH'z'"),
    day: from.toFormat('yyyyMMdd'),
    week: from.toFormat("kkkk'w'WW"),
    month: from.toFormat('yyyyMM'),
    quarter: from.toFormat("yyyy'q'q"),
    year: from.toFormat('yyyy'),
  }[interval];
  return `${table.slice(0, 63 - suffix.length - 2)}_p${suffix}`;
}

/**
 * Period boundaries of one interval in one zone, in epoch milliseconds, computed with
 * luxon once per run and shared by every parent of that kind: a fleet's steady-state
 * check then compares numbers.
 */
export class PeriodCalendar {
  private readonly kinds = new Map<
    string,
    { zone: string; interval: PartitionInterval; current: number; starts: number[]; known: Set<number> }
  >();

  constructor(private readonly now: DateTime) {}

  private kind(interval: PartitionInterval, zone: string) {
    const key = `${interval}/${zone}`;
    let k = this.kinds.get(key);
    if (!k) {
      const current = periodStart(this.now.setZone(zone), interval).toMillis();
      k = { zone, interval, current, starts: [current], known: new Set([current]) };
      this.kinds.set(key, k);
    }
    return k;
  }

  /** Computes boundaries until they reach `ms` on either side (at most ten thousand periods). */
  private extendTo(k: ReturnType<PeriodCalendar['kind']>, ms: number): void {
    for (let i = 0; k.starts[0]! > ms && i < 10_000; i++) {
      const earlier = periodStart(DateTime.fromMillis(k.starts[0]! - 1, { zone: k.zone }), k.interval).toMillis();
      k.starts.unshift(earlier);
      k.known.add(earlier);
    }
    for (let i = 0; k.starts.at(-1)! < ms && i < 10_000; i++) {
      const later = nextPeriod(DateTime.fromMillis(k.starts.at(-1)!, { zone: k.zone }), k.interval).toMillis();
      k.starts.push(later);
      k.known.add(later);
    }
  }

  /** Start of the period holding now. */
  current(interval: PartitionInterval, zone: string): number {
    return this.kind(interval, zone).current;
  }

  /** The start of the n-th period after the current one. */
  after(interval: PartitionInterval, zone: string, n: number): number {
    const k = this.kind(interval, zone);
    for (;;) {
      const at = k.starts.indexOf(k.current) + n;
      if (at < k.starts.length) return k.starts[at]!;
      this.extendTo(k, k.starts.at(-1)! + 1);
    }
  }

  /** Whether `ms` is a period boundary. */
  isBoundary(interval: PartitionInterval, zone: string, ms: number): boolean {
    const k = this.kind(interval, zone);
    this.extendTo(k, ms);
    return k.known.has(ms);
  }

  /** The boundaries from the one at or before `fromMs` through the first at or after `toMs`. */
  boundaries(interval: PartitionInterval, zone: string, fromMs: number, toMs: number): number[] {
    const k = this.kind(interval, zone);
    while (k.starts[0]! > fromMs) this.extendTo(k, fromMs);
    while (k.starts.at(-1)! < toMs) this.extendTo(k, toMs);
    let first = 0;
    while (k.starts[first + 1] !== undefined && k.starts[first + 1]! <= fromMs) first++;
    const last = k.starts.findIndex((b) => b >= toMs);
    return k.starts.slice(first, last + 1);
  }

  /** How many boundaries lie strictly between the current period's start and `ms`. */
  countAhead(interval: PartitionInterval, zone: string, ms: number): number {
    const k = this.kind(interval, zone);
    this.extendTo(k, ms);
    return k.starts.filter((b) => b > k.current && b < ms).length;
  }
}
