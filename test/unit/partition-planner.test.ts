import { DateTime } from 'luxon';
import { describe, expect, it } from 'vitest';
import { planMissing } from '../../src/partitions/planner.ts';
import { partitionPolicy } from '../../src/core/partition-policy.ts';
import type { ParentInfo } from '../../src/partitions/catalog.ts';
import { nextPeriod, partitionName } from '../../src/partitions/periods.ts';

describe('partition planner', () => {
  const policy = (over: object) =>
    partitionPolicy.parse({ table: 'sales.sale_order', column: 'date_order', interval: 'month', premake: 2, ...over });
  const parent = (parts: [string, string][], zone = 'UTC'): ParentInfo => ({
    schema: 'sales',
    table: 'sale_order',
    oid: 1,
    owner: 'o',
    keyType: 'timestamptz',
    partitions: parts.map(([from, to], i) => ({
      schema: 'sales',
      name: `p${i}`,
      isDefault: false,
      from: DateTime.fromISO(from, { zone }),
      to: DateTime.fromISO(to, { zone }),
      detachPending: false,
    })),
  });
  const iso = (p: { from: DateTime; to: DateTime }) => `${p.from.toISODate()}..${p.to.toISODate()}`;

  it('an empty parent gets the current period and premake ahead', () => {
    const { missing } = planMissing(parent([]), policy({}), DateTime.fromISO('2026-11-26T10:00:00Z'));
    expect(missing.map(iso)).toEqual(['2026-11-01..2026-12-01', '2026-12-01..2027-01-01', '2027-01-01..2027-02-01']);
  });

  it(
    'fills gaps back to the oldest partition, keeps existing bounds, and plans periods of stranded DEFAULT ' + 'rows',
    () => {
      const info = parent([
        ['2026-08-01', '2026-09-01'],
        ['2026-10-01', '2026-10-20'], // other bounds: October is only partly covered
      ]);
      const { missing, skipped } = planMissing(info, policy({}), DateTime.fromISO('2026-11-26T10:00:00Z'), [
        DateTime.fromISO('2026-03-15T00:00:00Z'),
      ]);
      expect(missing.map(iso)).toEqual([
        '2026-03-01..2026-04-01',
        '2026-09-01..2026-10-01',
        '2026-11-01..2026-12-01',
        '2026-12-01..2027-01-01',
        '2027-01-01..2027-02-01',
      ]);
      expect(skipped).toEqual([
        { range: expect.stringMatching(/^\[2026-10-01/), reason: expect.stringMatching(/partly covered by sales\.p1/) },
      ]);
    },
  );

  it('finds a gap among hourly partitions reaching back further than the calendar extends in one step', () => {
    const hourly = policy({ interval: 'hour', premake: 3 });
    const now = DateTime.fromISO('2026-11-26T10:30:00Z');
    // 15,000 hours of partitions, one missing 12,000 hours back; the calendar extends 10,000 at a time.
    const start = now.startOf('hour').minus({ hours: 15_000 });
    const parts: [string, string][] = [];
    for (let h = 0; h < 15_000 + 4; h++) {
      if (h === 3_000) continue;
      parts.push([start.plus({ hours: h }).toISO()!, start.plus({ hours: h + 1 }).toISO()!]);
    }
    const { missing, skipped } = planMissing(parent(parts), hourly, now, [
      DateTime.fromISO('2021-01-01T05:20:00Z', { zone: 'UTC' }),
    ]);
    expect(skipped).toEqual([]);
    expect(missing.map((p) => [p.from.toMillis(), p.to.toMillis()])).toEqual([
      [Date.parse('2021-01-01T05:00:00Z'), Date.parse('2021-01-01T06:00:00Z')],
      [start.plus({ hours: 3_000 }).toMillis(), start.plus({ hours: 3_001 }).toMillis()],
    ]);
  });

  it('periods follow local calendar days across a DST change; hourly partitions are named in UTC', () => {
    const berlin = policy({ interval: 'day', timeZone: 'Europe/Berlin' });
    const { missing } = planMissing(parent([], 'Europe/Berlin'), berlin, DateTime.fromISO('2026-10-24T12:00:00Z'));
    const dstDay = missing.find((p) => p.from.toISODate() === '2026-10-25')!;
    expect(dstDay.to.diff(dstDay.from, 'hours').hours).toBe(25);
    expect(partitionName('sale_order', dstDay.from, 'day')).toBe('sale_order_p20261025');
    const hour = DateTime.fromISO('2026-10-25T02:00:00', { zone: 'Europe/Berlin' });
    expect(partitionName('reading', hour, 'hour')).toBe(`reading_p${hour.toUTC().toFormat("yyyyMMdd'_'HH")}z`);
    expect(nextPeriod(DateTime.fromISO('2026-12-28T00:00:00Z', { zone: 'UTC' }), 'week').toISODate()).toBe(
      '2027-01-04',
    );
    expect(partitionName('t', DateTime.fromISO('2026-10-01T00:00:00Z', { zone: 'UTC' }), 'quarter')).toBe('t_p2026q4');
  });
});
