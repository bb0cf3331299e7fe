// Schedules as data: synced into BullMQ job schedulers on start (ids are stable;
// removing an entry here removes its scheduler from Redis). Times are read in `tz`.
// The config file can switch one off with scheduler.disabled: [id].
import type { Schedule } from '../src/runner/scheduler.ts';
import { BUSINESS_TIME_ZONE, MAIN_TARGET } from '../src/core/constants.ts';

/** A schedule of the main target in the business time zone (hourly, daily or weekly: the cron says). */
const mainSchedule = (id: string, job: string, cron: string): Schedule => ({
  id,
  job,
  cron,
  tz: BUSINESS_TIME_ZONE,
  payload: { target: MAIN_TARGET },
  catchUp: 'latest',
  overlap: 'skip',
});

export const schedules: Schedule[] = [
  // The physical base backup first, so the logical dump and the drill find a fresh one.
  mainSchedule('base-backup-main-nightly', 'base-backup', '0 1 * * *'),
  mainSchedule('backup-main-nightly', 'backup', '0 2 * * *'),
  // Yesterday in Asia/Dhaka, plus the three days before it for late or corrected orders.
  mainSchedule('sales-rollup-main-nightly', 'daily-sales-rollup', '0 2 * * *'),
  // Hourly, so a runway that ran short (or an outage) is repaired within the hour.
  mainSchedule('partitions-main-hourly', 'create-partitions', '7 * * * *'),
  // Archiving that stops is found within the hour, well inside the 15-minute-RPO budget's alarm.
  mainSchedule('archive-check-main-hourly', 'archive-check', '15 * * * *'),
  // docs/dairy-erp.md's 03:00 maintenance window, chosen from statistics, 30-minute budget by default.
  mainSchedule('vacuum-main-nightly', 'vacuum-analyze', '0 3 * * *'),
  // Retention after the nightly backup; a failed archive keeps the partition.
  mainSchedule('retention-main-daily', 'drop-expired-partitions', '30 3 * * *'),
  // Dashboards warm from before people arrive and through business hours (TTLs set per query).
  mainSchedule('warm-cache-main-business-hours', 'warm-cache', '*/10 7-22 * * *'),
  // Weekly proofs: PITR on Sunday, logical restore on Saturday, before business hours.
  mainSchedule('pitr-drill-main-weekly', 'pitr-drill', '0 4 * * sun'),
  mainSchedule('restore-check-main-weekly', 'restore-check', '0 4 * * sat'),
  // After the night's backups and proofs: old dumps, base backups and WAL go.
  mainSchedule('prune-backups-main-daily', 'prune-backups', '0 5 * * *'),
];
