// The dead-man rule grouped by job: a stopped worker, or a cluster down, misses every target's
// schedule of a job at once, and that is one alert listing the targets, not one per schedule.
import { describe, expect, it } from 'vitest';
import type { Config } from '../../src/core/config.ts';
import { judge, RULES } from '../../src/monitoring/alert-rules.ts';
import type { HealthSnapshot, ScheduleHealth } from '../../src/monitoring/health.ts';

const HOUR = 3_600_000;
const at = Date.parse('2026-12-03T12:00:00Z');
// Every rule but the dead-man's is off, so the snapshot needs only its schedules.
const cfg = {
  deadmanGraceMs: 30 * 60_000,
  disabled: RULES.map((r) => r.rule).filter((r) => r !== 'deadman'),
} as unknown as Config['alerts'];
const schedule = (job: string, target: string, dueBy: number | null): ScheduleHealth => ({
  id: `${job}:${target}`,
  job,
  target,
  nextRun: at + HOUR,
  lastSuccess: null,
  startLagSeconds: null,
  dueBy,
});
const snapshot = (schedules: ScheduleHealth[]) => ({ at, schedules }) as unknown as HealthSnapshot;

describe('dead-man alerts grouped by job', () => {
  it('many targets missing one job is one alert that lists them; another job is another alert', () => {
    const late = at - 2 * HOUR;
    const alerts = judge(
      snapshot([
        ...Array.from({ length: 12 }, (_, i) =>
          schedule('query-stats-snapshot', `t${String(i).padStart(2, '0')}`, late),
        ),
        schedule('query-stats-snapshot', 'on-time', at + HOUR),
        schedule('archive-check', 't00', late),
      ]),
      cfg,
    );
    expect(alerts.map((a) => a.key).sort()).toEqual(['deadman:archive-check', 'deadman:query-stats-snapshot']);
    const qs = alerts.find((a) => a.key === 'deadman:query-stats-snapshot')!;
    expect(qs.targets).toHaveLength(12);
    expect(qs.targets).not.toContain('on-time');
    expect(qs.labels).toEqual({ job: 'query-stats-snapshot' });
    expect(qs.summary).toMatch(/^12 schedules of query-stats-snapshot on 12 targets \(t00, t01, .* and 2 more\)/);
    const one = alerts.find((a) => a.key === 'deadman:archive-check')!;
    expect(one.targets).toEqual(['t00']);
    expect(one.summary).toMatch(/^schedule archive-check:t00 \(archive-check on t00\) has not succeeded since/);
  });

  it('a schedule within its grace is not late', () => {
    expect(judge(snapshot([schedule('backup', 't1', at - 10 * 60_000)]), cfg)).toEqual([]);
  });
});
