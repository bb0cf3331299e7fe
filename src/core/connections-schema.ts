// The config file's `connections` key and a target's `cluster`: how many sessions one
// process may hold on each PostgreSQL cluster (docs/configuration.md#connections).
import { z } from 'zod';

/** A cluster's name: a target's `cluster`, or host:port of its URL (db1.internal:5432, [::1]:5432). */
export const CLUSTER_NAME = /^[A-Za-z0-9[][A-Za-z0-9_.:[\]-]{0,252}$/;

export const clusterName = z
  .string()
  .regex(CLUSTER_NAME, 'must be a cluster name: letters, digits and _ . : - [ ] (e.g. db1.internal:5432)');

/** A cluster's budget: sessions one process may hold on it at once. */
const budget = z.number().int().min(2, 'must be at least 2 (a run may hold two sessions at once)').max(10_000);
const readings = z.number().int().min(1).max(10_000);

/**
 * Sessions on each PostgreSQL cluster, per process: every session of the process (runs
 * of jobs, the run history, health readings, /readyz) takes a permit of its cluster's
 * budget; work that finds it spent waits. See docs/fleet.md.
 */
export const connectionsSchema = z
  .object({
    /** Sessions one process may hold on one cluster at once. */
    budget: budget.default(10),
    /** Of those, what the health readings and /readyz may hold at once. */
    readings: readings.default(2),
    /** A session left unused this long is closed (none is kept open for its own sake). */
    idleTimeoutMs: z.number().int().min(100).max(86_400_000).default(10_000),
    /** Per cluster (a target's `cluster`, or host:port of its URL): its own budget and readings. */
    clusters: z
      .record(clusterName, z.object({ budget: budget.optional(), readings: readings.optional() }).strict())
      .default({}),
  })
  .strict();
