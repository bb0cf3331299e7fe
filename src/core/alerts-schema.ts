// The config file's `alerts` key: the monitor's interval, thresholds and the rules
// switched off by name (docs/configuration.md, docs/monitoring.md).
import { z } from 'zod';

export const ALERT_RULES = [
  'job-failed',
  'deadman',
  'no-worker',
  'overrun',
  'backup-age',
  'archive-lag',
  'partition-runway',
  'default-rows',
  'retention-orphan',
  'corruption',
  'health-read',
  'target-unreachable',
  'governor-held',
] as const;

export const alertsSchema = z
  .object({
    /** How often the monitor judges the health snapshot. */
    intervalMs: z.number().int().min(1000).default(60_000),
    /** Dead-man switch: a schedule's success may be this late past its run plus maximum run time. */
    deadmanGraceMs: z
      .number()
      .int()
      .min(0)
      .default(30 * 60_000),
    /** A queue that needs a worker may go this long without one. */
    noWorkerForMs: z
      .number()
      .int()
      .min(0)
      .default(2 * 60_000),
    /** An active job may run this long past its maximum run time before it counts as stuck. */
    overrunGraceMs: z
      .number()
      .int()
      .min(0)
      .default(5 * 60_000),
    maxDumpAgeHours: z.number().positive().default(26),
    maxBaseBackupAgeHours: z.number().positive().default(26),
    /** docs/dairy-erp.md: RPO under 15 minutes. */
    maxArchiveLagSeconds: z.number().int().positive().default(900),
    minPartitionRunwayDays: z.number().positive().default(3),
    /** Rules switched off by name (job-failed, deadman, no-worker, overrun, backup-age, archive-lag,
     * partition-runway, default-rows, retention-orphan, corruption, health-read, target-unreachable,
     * governor-held). */
    disabled: z.array(z.enum(ALERT_RULES)).default([]),
  })
  .strict();
