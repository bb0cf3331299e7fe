import { DateTime } from 'luxon';
import { describe, expect, it } from 'vitest';
import { nextRun, nextRuns, parseCron } from '../../src/core/cron.ts';

/** Runs between two local dates, as local ISO strings. */
function runsBetween(cron: string, tz: string, fromIso: string, toIso: string): string[] {
  const end = DateTime.fromISO(toIso, { zone: tz }).toMillis();
  const out: string[] = [];
  let t = DateTime.fromISO(fromIso, { zone: tz }).toMillis();
  for (;;) {
    t = nextRun(cron, tz, t);
    if (t > end) return out;
    out.push(DateTime.fromMillis(t, { zone: tz }).toISO({ suppressMilliseconds: true })!);
  }
}

describe('cron in IANA time zones', () => {
  it('Asia/Dhaka has no DST: 02:00 local is 20:00 UTC the day before', () => {
    const after = Date.parse('2026-11-23T12:00:00Z');
    expect(new Date(nextRun('0 2 * * *', 'Asia/Dhaka', after)).toISOString()).toBe('2026-11-23T20:00:00.000Z');
    expect(nextRuns('0 2 * * *', 'Asia/Dhaka', after, 2)).toEqual([
      '2026-11-24T02:00:00.000+06:00',
      '2026-11-25T02:00:00.000+06:00',
    ]);
  });

  it('America/New_York: daily 02:30 runs exactly once on spring-forward and fall-back days', () => {
    // 2026-03-08: 02:00 EST → 03:00 EDT, so 02:30 does not exist and runs at 03:30.
    expect(runsBetween('30 2 * * *', 'America/New_York', '2026-03-07T00:00', '2026-03-10T00:00')).toEqual([
      '2026-03-07T02:30:00-05:00',
      '2026-03-08T03:30:00-04:00',
      '2026-03-09T02:30:00-04:00',
    ]);
    // 2026-11-01: 02:00 EDT → 01:00 EST; 02:30 happens once.
    expect(runsBetween('30 2 * * *', 'America/New_York', '2026-10-31T00:00', '2026-11-03T00:00')).toEqual([
      '2026-10-31T02:30:00-04:00',
      '2026-11-01T02:30:00-05:00',
      '2026-11-02T02:30:00-05:00',
    ]);
    // 01:30 occurs twice on the fall-back night: it runs at the first occurrence only.
    expect(runsBetween('30 1 * * *', 'America/New_York', '2026-10-31T12:00', '2026-11-02T00:00')).toEqual([
      '2026-11-01T01:30:00-04:00',
    ]);
  });

  it('Europe/London: 01:30 on spring-forward shifts to 02:30 BST, on fall-back runs once', () => {
    expect(runsBetween('30 1 * * *', 'Europe/London', '2026-03-28T00:00', '2026-03-31T00:00')).toEqual([
      '2026-03-28T01:30:00Z'.replace('Z', '+00:00'),
      '2026-03-29T02:30:00+01:00',
      '2026-03-30T01:30:00+01:00',
    ]);
    expect(runsBetween('30 1 * * *', 'Europe/London', '2026-10-24T12:00', '2026-10-27T00:00')).toEqual([
      '2026-10-25T01:30:00+01:00',
      '2026-10-26T01:30:00+00:00',
    ]);
  });

  it('hourly runs keep their wall-clock hours across DST and never repeat an instant', () => {
    const runs = runsBetween('0 * * * *', 'Europe/London', '2026-10-25T00:30', '2026-10-25T04:00');
    expect(runs).toEqual([
      '2026-10-25T01:00:00+01:00',
      '2026-10-25T02:00:00+00:00',
      '2026-10-25T03:00:00+00:00',
      '2026-10-25T04:00:00+00:00',
    ]);
    const instants = runs.map((r) => Date.parse(r));
    expect(new Set(instants).size).toBe(instants.length);
  });

  it('supports lists, ranges, steps, names and day-of-week', () => {
    const c = parseCron('*/15 8-10 * jan-mar mon-fri');
    expect(c.minutes).toEqual([0, 15, 30, 45]);
    expect(c.hours).toEqual([8, 9, 10]);
    // Monday 2026-01-05 08:00 UTC is the first weekday match after New Year.
    expect(new Date(nextRun(c, 'UTC', Date.parse('2026-01-03T00:00:00Z'))).toISOString()).toBe(
      '2026-01-05T08:00:00.000Z',
    );
    expect(new Date(nextRun('0 3 * * 7', 'UTC', Date.parse('2026-11-23T00:00:00Z'))).toISOString()).toBe(
      '2026-11-29T03:00:00.000Z',
    );
  });

  it('rejects malformed expressions with the field named', () => {
    expect(() => parseCron('0 2 * *')).toThrow(/5 fields/);
    expect(() => parseCron('61 2 * * *')).toThrow(/minute value "61" is out of range/);
    expect(() => parseCron('0 2 * * funday')).toThrow(/day of week/);
    expect(() => nextRun('0 2 * * *', 'Mars/Olympus', 0)).toThrow(/IANA/);
  });
});
