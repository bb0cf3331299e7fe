// Five-field cron (minute hour day-of-month month day-of-week) evaluated in an
// IANA time zone with luxon. DST rules, so that a daily job runs exactly once a day:
// - a wall-clock time skipped by spring-forward runs at the same offset after the gap
//   (02:30 on a 02:00→03:00 night runs at 03:30 local);
// - a wall-clock time repeated by fall-back runs at its first occurrence only.
import type { RepeatOptions } from 'bullmq';
import { DateTime, IANAZone } from 'luxon';

export interface CronExpression {
  source: string;
  minutes: number[];
  hours: number[];
  daysOfMonth: Set<number>;
  months: Set<number>;
  daysOfWeek: Set<number>; // 0 = Sunday … 6 = Saturday
  domRestricted: boolean;
  dowRestricted: boolean;
}

const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12 },
  { name: 'day of week', min: 0, max: 7 },
] as const;

const NAMES: Record<string, number> = {
  jan: 1,
  feb: 2,
  mar: 3,
  apr: 4,
  may: 5,
  jun: 6,
  jul: 7,
  aug: 8,
  sep: 9,
  oct: 10,
  nov: 11,
  dec: 12,
  sun: 0,
  mon: 1,
  tue: 2,
  wed: 3,
  thu: 4,
  fri: 5,
  sat: 6,
};

function parseField(text: string, field: (typeof FIELDS)[number]): number[] {
  const values = new Set<number>();
  for (const part of text.split(',')) {
    const m = /^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:\/(\d+))?$/i.exec(part);
    if (!m) throw new Error(`cron ${field.name} field "${text}" is not valid`);
    const num = (s: string) => {
      const v = /^\d+$/.test(s) ? Number(s) : NAMES[s.toLowerCase()];
      if (v === undefined || v < field.min || v > field.max)
        throw new Error(`cron ${field.name} value "${s}" is out of range ${field.min}-${field.max}`);
      return v;
    };
    let lo: number, hi: number;
    if (m[1] === '*') [lo, hi] = [field.min, field.max];
    else if (m[1]!.includes('-')) [lo, hi] = m[1]!.split('-').map(num) as [number, number];
    else [lo, hi] = [num(m[1]!), m[2] ? field.max : num(m[1]!)];
    const step = m[2] ? Number(m[2]) : 1;
    if (step < 1 || lo > hi) throw new Error(`cron ${field.name} field "${text}" is not valid`);
    for (let v = lo; v <= hi; v += step) values.add(field.name === 'day of week' && v === 7 ? 0 : v);
  }
  return [...values].sort((a, b) => a - b);
}

export function parseCron(source: string): CronExpression {
  const parts = source.trim().split(/\s+/);
  if (parts.length !== 5)
    throw new Error(`cron "${source}" must have 5 fields (minute hour day-of-month month day-of-week)`);
  const [mi, h, dom, mon, dow] = parts.map((p, i) => parseField(p, FIELDS[i]!));
  return {
    source,
    minutes: mi!,
    hours: h!,
    daysOfMonth: new Set(dom),
    months: new Set(mon),
    daysOfWeek: new Set(dow),
    domRestricted: parts[2] !== '*',
    dowRestricted: parts[4] !== '*',
  };
}

function dayMatches(c: CronExpression, day: DateTime): boolean {
  if (!c.months.has(day.month)) return false;
  const dom = c.daysOfMonth.has(day.day);
  const dow = c.daysOfWeek.has(day.weekday % 7);
  // Classic cron: when both day fields are restricted, either may match.
  if (c.domRestricted && c.dowRestricted) return dom || dow;
  return dom && dow;
}

/**
 * The instant of a local wall-clock time. luxon moves a nonexistent time forward by
 * the gap; for an ambiguous one it picks the later offset, so we step back to the
 * first occurrence when it shows the same wall-clock time.
 */
function wallClock(day: DateTime, hour: number, minute: number, tz: string): number {
  const t = DateTime.fromObject({ year: day.year, month: day.month, day: day.day, hour, minute }, { zone: tz });
  const offsetBefore = t.minus({ hours: 25 }).offset;
  if (offsetBefore > t.offset) {
    const earlier = t.minus({ minutes: offsetBefore - t.offset });
    if (earlier.hour === hour && earlier.minute === minute) return earlier.toMillis();
  }
  return t.toMillis();
}

// The last answer per cron and zone: nextRun(t) is the same for every t in [from, next),
// so a fleet's thousands of schedulers that share a cron cost one evaluation, not one each
// (an evaluation of a 15-minute cron walks a day and a half of candidate times).
const lastAnswers = new Map<string, { from: number; next: number }>();
const parsed = new Map<string, CronExpression>();

/** The first run strictly after `afterMs`, as epoch milliseconds. */
export function nextRun(cron: CronExpression | string, tz: string, afterMs: number): number {
  const c = typeof cron === 'string' ? cachedParse(cron) : cron;
  const key = `${c.source}\u0000${tz}`;
  const last = lastAnswers.get(key);
  if (last && afterMs >= last.from && afterMs < last.next) return last.next;
  const next = evaluate(c, tz, afterMs);
  if (lastAnswers.size > 1000) lastAnswers.clear();
  // An earlier start with the same answer widens the known interval.
  lastAnswers.set(
    key,
    last && last.next === next ? { from: Math.min(last.from, afterMs), next } : { from: afterMs, next },
  );
  return next;
}

function cachedParse(source: string): CronExpression {
  let c = parsed.get(source);
  if (!c) {
    c = parseCron(source);
    if (parsed.size > 1000) parsed.clear();
    parsed.set(source, c);
  }
  return c;
}

function evaluate(c: CronExpression, tz: string, afterMs: number): number {
  if (!IANAZone.isValidZone(tz)) throw new Error(`time zone "${tz}" is not an IANA zone`);
  // Start a day early: a run shifted by spring-forward may land after `afterMs`
  // even though its wall-clock day began before it.
  let day = DateTime.fromMillis(afterMs, { zone: tz }).startOf('day').minus({ days: 1 });
  for (let i = 0; i < 366 * 5; i++, day = day.plus({ days: 1 })) {
    if (!dayMatches(c, day)) continue;
    for (const hour of c.hours) {
      for (const minute of c.minutes) {
        const t = wallClock(day, hour, minute, tz);
        if (t > afterMs) return t;
      }
    }
  }
  throw new Error(`cron "${c.source}" has no run in the next five years`);
}

/** The next `count` runs after `afterMs`, as ISO strings in the zone. */
export function nextRuns(cron: string, tz: string, afterMs: number, count: number): string[] {
  const c = parseCron(cron);
  const out: string[] = [];
  let t = afterMs;
  for (let i = 0; i < count; i++) {
    t = nextRun(c, tz, t);
    out.push(DateTime.fromMillis(t, { zone: tz }).toISO()!);
  }
  return out;
}

/**
 * The next run of a schedule spread over a window: the cron's runs shifted by the
 * target's offset (core/spread.ts), so it lies in [cron time, cron time + spread).
 */
export function nextSpreadRun(cron: CronExpression | string, tz: string, afterMs: number, offsetMs: number): number {
  return nextRun(cron, tz, afterMs - offsetMs) + offsetMs;
}

/** The shortest time between two consecutive runs over the next `count` runs (a spread must be shorter). */
export function shortestGapMs(cron: string, tz: string, fromMs: number, count = 48): number {
  const key = `${cron}\u0000${tz}`;
  const known = shortestGaps.get(key);
  if (known !== undefined) return known;
  let [t, gap] = [nextRun(cron, tz, fromMs), Number.POSITIVE_INFINITY];
  for (let i = 1; i < count; i++) {
    const next = evaluate(cachedParse(cron), tz, t);
    gap = Math.min(gap, next - t);
    t = next;
  }
  shortestGaps.set(key, gap);
  return gap;
}
const shortestGaps = new Map<string, number>();

/** Repeat options of a scheduler: BullMQ keeps unknown keys and hands them back to the strategy. */
export type SpreadRepeatOptions = RepeatOptions & { spreadOffsetMs?: number };

/** BullMQ calls this for every cron scheduler: our luxon evaluator, not cron-parser, shifted by the spread. */
export function repeatStrategy(millis: number, opts: SpreadRepeatOptions): number | undefined {
  if (!opts.pattern) return undefined;
  return nextSpreadRun(opts.pattern, opts.tz ?? 'UTC', millis, opts.spreadOffsetMs ?? 0);
}
