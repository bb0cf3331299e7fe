// The default schedules, as data. Every configured target gets its own set, with ids
// that name it (backup-main-nightly, backup-reporting-nightly), unless the target says
// `schedules: none` or lists the ids it wants. The config file's `schedules:` list then
// changes or adds entries (src/runner/scheduler.ts, applyScheduleEntries). On start the
// result is synced into BullMQ job schedulers: an id that left the list leaves Redis.
import type { Config, TargetConfig } from '../src/core/config.ts';
import { ConfigError } from '../src/core/errors.ts';
import type { Schedule } from '../src/runner/scheduler.ts';

interface Template {
  /** The id with {target} in it. */
  id: string;
  job: string;
  cron: string;
  /** Payload fields besides the target, from the target's settings. */
  payload?: (target: TargetConfig) => Record<string, unknown>;
  /** Whether the target has anything for this job to do; "missing protection" is never a reason to leave one out. */
  applies?: (target: TargetConfig, config: Config) => boolean;
}

const TEMPLATES: Template[] = [
  // The physical base backup first, so the logical dump and the drill find a fresh one.
  // Scheduled on every target: one without WAL archiving fails loudly rather than go unprotected.
  { id: 'base-backup-{target}-nightly', job: 'base-backup', cron: '0 1 * * *' },
  { id: 'backup-{target}-nightly', job: 'backup', cron: '0 2 * * *' },
  // Yesterday in the business zone, plus the three days before it for late or corrected
  // orders. The sales tables are the ERP's own, in the main database only.
  {
    id: 'sales-rollup-{target}-nightly',
    job: 'daily-sales-rollup',
    cron: '0 2 * * *',
    applies: (t) => t.name === 'main',
  },
  // Hourly, so a runway that ran short (or an outage) is repaired within the hour.
  {
    id: 'partitions-{target}-hourly',
    job: 'create-partitions',
    cron: '7 * * * *',
    applies: (t, c) => c.partitions.some((p) => p.target === t.name),
  },
  // Archiving that stops is found within the hour, well inside the 15-minute-RPO budget's alarm.
  { id: 'archive-check-{target}-hourly', job: 'archive-check', cron: '15 * * * *' },
  // The 03:00 maintenance window (docs/dairy-erp.md), 30-minute budget by default.
  { id: 'vacuum-{target}-nightly', job: 'vacuum-analyze', cron: '0 3 * * *' },
  // Sunday in the 03:00 window, after vacuum: bloated and invalid indexes rebuilt online.
  { id: 'index-maintenance-{target}-weekly', job: 'index-maintenance', cron: '15 3 * * sun' },
  // Retention after the nightly backup; a failed archive keeps the partition.
  {
    id: 'retention-{target}-daily',
    job: 'drop-expired-partitions',
    cron: '30 3 * * *',
    applies: (t, c) => c.partitions.some((p) => p.target === t.name && p.retention),
  },
  // Dashboards warm from before people arrive and through business hours (TTLs set per query).
  {
    id: 'warm-cache-{target}-business-hours',
    job: 'warm-cache',
    cron: '*/10 7-22 * * *',
    applies: (t, c) => c.cache.queries.some((q) => q.target === t.name),
  },
  // amcheck: the tables written since their last clean check nightly, every table on Saturday night.
  { id: 'integrity-check-{target}-nightly', job: 'integrity-check', cron: '30 4 * * 0-5' },
  {
    id: 'integrity-check-{target}-weekly-full',
    job: 'integrity-check',
    cron: '30 4 * * 6',
    payload: () => ({ full: true }),
  },
  // Statement costs every 15 minutes (pg_stat_statements deltas), kept 14 days.
  { id: 'query-stats-{target}-15min', job: 'query-stats-snapshot', cron: '*/15 * * * *' },
  // pg_repack on the first of the month, 02:30, of the tables the target's repackTables names.
  {
    id: 'repack-{target}-monthly',
    job: 'repack-table',
    cron: '30 2 1 * *',
    applies: (t) => t.repackTables.length > 0,
    payload: (t) => ({ tables: t.repackTables }),
  },
  // Weekly, Monday before business hours: indexes unused, overlapping, or missing under a foreign key.
  { id: 'index-report-{target}-weekly', job: 'index-report', cron: '0 6 * * mon' },
  // Weekly proofs: PITR on Sunday, logical restore on Saturday, before business hours.
  { id: 'pitr-drill-{target}-weekly', job: 'pitr-drill', cron: '0 4 * * sun' },
  { id: 'restore-check-{target}-weekly', job: 'restore-check', cron: '0 4 * * sat' },
  // After the night's backups and proofs: old dumps, base backups and WAL go.
  { id: 'prune-backups-{target}-daily', job: 'prune-backups', cron: '0 5 * * *' },
];

/** A target's default schedules, before its `schedules:` selection. */
function forTarget(target: TargetConfig, config: Config): Schedule[] {
  return TEMPLATES.filter((t) => t.applies?.(target, config) ?? true).map((t) => ({
    id: t.id.replace('{target}', target.name),
    job: t.job,
    cron: t.cron,
    tz: config.businessTimeZone,
    payload: { ...t.payload?.(target), target: target.name },
    catchUp: 'latest',
    overlap: 'skip',
  }));
}

/** Every target's default schedules, as each target's `schedules:` selects them. */
export function defaultSchedules(config: Config): Schedule[] {
  return [...config.targets.values()].flatMap((target) => {
    const all = forTarget(target, config);
    const want = target.schedules;
    if (want === 'default') return all;
    if (want === 'none') return [];
    want.forEach((id, i) => {
      if (!all.some((s) => s.id === id))
        throw new ConfigError(
          `targets.${target.name}.schedules.${i}: no default schedule "${id}" for this target ` +
            `(known: ${all.map((s) => s.id).join(', ') || 'none'})`,
        );
    });
    return all.filter((s) => want.includes(s.id));
  });
}
