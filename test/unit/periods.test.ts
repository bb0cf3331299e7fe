import { DateTime } from 'luxon';
import { describe, expect, it } from 'vitest';
import { nextPeriod, PeriodCalendar, periodStart } from '../../src/partitions/periods.ts';

describe('period calendar', () => {
  it('gives the boundaries luxon steps to, across DST, in both directions', () => {
    const now = DateTime.fromISO('2026-03-29T00:30:00Z');
    for (const zone of ['Europe/London', 'America/New_York', 'Asia/Dhaka']) {
      for (const interval of ['hour', 'day', 'week', 'month', 'quarter'] as const) {
        const cal = new PeriodCalendar(now);
        const current = periodStart(now.setZone(zone), interval);
        expect(cal.current(interval, zone), `${zone} ${interval}`).toBe(current.toMillis());
        // 40 periods back and ahead, stepped with the planner's own nextPeriod.
        let t = current;
        for (let i = 0; i < 40; i++) t = periodStart(t.minus({ milliseconds: 1 }), interval);
        const steps: number[] = [];
        for (let i = 0; i <= 80; i++, t = nextPeriod(t, interval)) steps.push(t.toMillis());
        for (const b of steps) expect(cal.isBoundary(interval, zone, b), `${zone} ${interval} ${b}`).toBe(true);
        expect(cal.isBoundary(interval, zone, steps[41]! + 60_000)).toBe(false);
        const at = steps.indexOf(current.toMillis());
        expect(cal.after(interval, zone, 5)).toBe(steps[at + 5]);
        expect(cal.countAhead(interval, zone, steps[at + 7]!)).toBe(6);
      }
    }
  });
});
