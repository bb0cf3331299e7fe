// The load governor's policy (docs/governor.md): when a heavy job waits before its next
// unit of work, and when it stops. Defaults here; the config file's `governor:` and
// `targets.<name>.governor:` lay their keys over them, a payload's `governor` field over
// those (never customSql: a statement to run comes from the config file only).
import { z } from 'zod';

/** A rate as pg_basebackup's --max-rate writes it: kB/s, or with a k or M suffix. */
const maxRate = z
  .string()
  .regex(/^[1-9]\d{0,6}[kM]?$/, 'must look like "800k" or "50M" (kB/s unless M, as pg_basebackup --max-rate)');

const threshold = (min: number, max: number, int = false) =>
  (int ? z.number().int() : z.number()).min(min).max(max).nullable();

/** Every key, without defaults: what each level may give. null switches a signal off. */
const shape = {
  /** false: the job runs flat out (no sampling, no waits; manual holds still apply). */
  enabled: z.boolean(),
  /** How often the signals are read while a governed run is active on the target. */
  checkEveryMs: z.number().int().min(50).max(60_000),
  /** The probe (select 1) may take this many times its rolling quiet baseline… */
  maxProbeRatio: threshold(1.1, 1000),
  /** …and never throttles below this many milliseconds. */
  minProbeMs: z.number().min(0).max(60_000),
  /** Active sessions that are not pgmaint's (nor pg_repack's), cluster-wide. */
  maxActive: threshold(1, 100_000, true),
  /** Sessions waiting on a lock, other than those our own sessions block. */
  maxLockWaits: threshold(1, 100_000, true),
  /** Replay lag of any standby in pg_stat_replication, for jobs that write WAL. */
  maxReplicaLagSeconds: threshold(0.1, 86_400),
  /** At these a run is aborted (retryable) at once, not only held. */
  criticalActive: threshold(1, 100_000, true),
  criticalProbeRatio: threshold(1.1, 1000),
  criticalReplicaLagSeconds: threshold(0.1, 86_400),
  /** A read-only statement returning one number (gh-ost's max-load), with its limits. */
  customSql: z.string().min(1).max(4000).nullable(),
  customMax: z.number().nullable(),
  customCritical: z.number().nullable(),
  /** The window: a run held longer than this at one stretch stops as "deferred by load". */
  maxPauseSeconds: z
    .number()
    .int()
    .min(1)
    .max(7 * 86_400),
  /** pg_basebackup --max-rate for base-backup runs whose payload gives none. */
  baseBackupMaxRate: maxRate.nullable(),
  // Inside a unit, while governed (core/gentle.ts): the work itself made gentler.
  /** vacuum_cost_delay (ms) of governed VACUUM and ANALYZE, when more than the job's own. */
  vacuumCostDelayMs: z.number().min(0).max(100).nullable(),
  /** vacuum_cost_limit of governed VACUUM and ANALYZE, when less than the job's own. */
  vacuumCostLimit: threshold(1, 10_000, true),
  /** max_parallel_maintenance_workers of governed builds and VACUUMs (pg_repack's too). */
  maxParallelMaintenanceWorkers: threshold(0, 1024, true),
  /** Bytes a second through each governed stream (pg_dump's pipe, the read-back, uploads), as maxRate. */
  streamMaxRate: maxRate.nullable(),
  /** The niceness governed child processes (pg_dump, zstd, pg_restore, pg_repack) start at. */
  childNice: threshold(0, 19, true),
};

export const governorKeys = z.object(shape).partial().strict();

/** The payload field of every governed job: the same keys but customSql. */
export const governorOverride = governorKeys.omit({ customSql: true }).strict();

export type GovernorPolicy = { [K in keyof typeof shape]: z.output<(typeof shape)[K]> };
export type GovernorKeys = z.output<typeof governorKeys>;
export type GovernorOverride = z.output<typeof governorOverride>;

export const GOVERNOR_DEFAULTS: GovernorPolicy = {
  enabled: true,
  checkEveryMs: 1000,
  maxProbeRatio: 3,
  minProbeMs: 5,
  maxActive: 16,
  maxLockWaits: 8,
  maxReplicaLagSeconds: 30,
  criticalActive: null,
  criticalProbeRatio: null,
  criticalReplicaLagSeconds: null,
  customSql: null,
  customMax: null,
  customCritical: null,
  maxPauseSeconds: 1800,
  baseBackupMaxRate: null,
  vacuumCostDelayMs: 10,
  vacuumCostLimit: null,
  maxParallelMaintenanceWorkers: 0,
  streamMaxRate: '8M',
  childNice: 10,
};

/** The field governed jobs put in their payload schema: the run's own thresholds over the target's. */
export const governorField = governorOverride.optional();

/** Lays levels over each other, key by key; an absent key leaves the one below (null is a value: off). */
export function mergeGovernor(base: GovernorPolicy, ...levels: (GovernorKeys | undefined)[]): GovernorPolicy {
  const out = { ...base } as Record<string, unknown>;
  for (const level of levels) for (const [k, v] of Object.entries(level ?? {})) if (v !== undefined) out[k] = v;
  return out as GovernorPolicy;
}

/**
 * Thresholds that contradict each other once merged, each naming its key where it was
 * given: `at("maxActive")` is e.g. "targets.main.governor.maxActive".
 */
export function governorIssues(p: GovernorPolicy, at: (key: string) => string): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  const above = (critical: keyof GovernorPolicy, max: keyof GovernorPolicy) => {
    const c = p[critical] as number | null;
    const m = p[max] as number | null;
    if (c !== null && m !== null && c < m)
      issues.push({ path: at(critical), message: `must be at least ${max} (${m}): it aborts, ${max} only holds` });
  };
  above('criticalActive', 'maxActive');
  above('criticalProbeRatio', 'maxProbeRatio');
  above('criticalReplicaLagSeconds', 'maxReplicaLagSeconds');
  above('customCritical', 'customMax');
  for (const key of ['customMax', 'customCritical'] as const)
    if (p[key] !== null && p.customSql === null)
      issues.push({ path: at(key), message: 'needs customSql (a statement returning one number) in the config file' });
  if (p.customSql !== null && p.customMax === null && p.customCritical === null)
    issues.push({ path: at('customSql'), message: 'give customMax or customCritical: a number it is compared with' });
  return issues;
}
