// Inside a unit of a governed run (docs/governor.md#inside-a-unit): the governor decides
// between units, and a unit once started costs the application what its statements cost.
// While the governor is on, the work itself is made gentler with PostgreSQL's and the OS's
// own means: VACUUM's and ANALYZE's cost-based delay, no parallel maintenance workers, a
// byte rate on streams (the pipe read slower: the server's COPY waits in ClientWrite), and
// child processes at a lower priority. A run with the governor off gets none of it.
import type { GovernorPolicy } from './governor-policy.ts';

export interface Gentle {
  vacuumCostDelayMs: number | null;
  vacuumCostLimit: number | null;
  maxParallelMaintenanceWorkers: number | null;
  /** Bytes a second through each stream, or null. */
  streamBytesPerSecond: number | null;
  childNice: number | null;
}

/** What a run governed by `policy` does inside its units; null when the governor is off for it. */
export function gentleOf(policy: GovernorPolicy): Gentle | null {
  if (!policy.enabled) return null;
  return {
    vacuumCostDelayMs: policy.vacuumCostDelayMs,
    vacuumCostLimit: policy.vacuumCostLimit,
    maxParallelMaintenanceWorkers: policy.maxParallelMaintenanceWorkers,
    streamBytesPerSecond: policy.streamMaxRate === null ? null : rateBytes(policy.streamMaxRate),
    childNice: policy.childNice,
  };
}

/** "800k" (or "800") → 819,200 bytes a second, "8M" → 8,388,608, as pg_basebackup reads --max-rate. */
export function rateBytes(rate: string): number {
  const n = Number.parseInt(rate, 10);
  return n * (rate.endsWith('M') ? 1024 * 1024 : 1024);
}

/**
 * The session settings a governed VACUUM or ANALYZE runs with: the stricter of the job's own
 * throttle and the governor's (a longer delay, a lower limit), and the parallel workers.
 * `serverLimit` is the session's vacuum_cost_limit when the job gives none.
 */
export function vacuumSettings(
  g: Gentle | null,
  own: { costDelayMs: number; costLimit?: number },
  serverLimit: number,
): Record<string, string> {
  const delay = Math.max(own.costDelayMs, g?.vacuumCostDelayMs ?? 0);
  const limit = own.costLimit ?? serverLimit;
  const out: Record<string, string> = {
    vacuum_cost_delay: String(delay),
    vacuum_cost_limit: String(Math.min(limit, g?.vacuumCostLimit ?? limit)),
  };
  if (g?.maxParallelMaintenanceWorkers != null)
    out.max_parallel_maintenance_workers = String(g.maxParallelMaintenanceWorkers);
  return out;
}

/** Settings for a governed index build's session (REINDEX): no parallel workers. */
export function buildSettings(g: Gentle | null): Record<string, string> {
  return g?.maxParallelMaintenanceWorkers != null
    ? { max_parallel_maintenance_workers: String(g.maxParallelMaintenanceWorkers) }
    : {};
}

/** pg_repack's sessions: its CREATE INDEX as a build, its closing ANALYZE paced as VACUUM's. */
export function repackSettings(g: Gentle | null): Record<string, string> {
  const out = buildSettings(g);
  if (g?.vacuumCostDelayMs != null) out.vacuum_cost_delay = String(g.vacuumCostDelayMs);
  if (g?.vacuumCostLimit != null) out.vacuum_cost_limit = String(g.vacuumCostLimit);
  return out;
}

/**
 * PGOPTIONS for a child's sessions: `settings` as `-c name=value` after what PGOPTIONS
 * already holds (names and values are ours: numbers and identifiers, nothing to escape).
 */
export function pgOptions(settings: Record<string, string>, base = process.env.PGOPTIONS): string | undefined {
  const own = Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`);
  if (!own.length) return undefined;
  return [base?.trim(), ...own].filter(Boolean).join(' ');
}
