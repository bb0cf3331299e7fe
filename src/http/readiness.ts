// GET /readyz: Redis answers, each PostgreSQL cluster answers a live `select 1` (one per
// cluster, on the readings' share of its connection budget), and each target was reachable
// in the health sampler's latest snapshot, whose age the answer gives. Its cost does not grow
// with the databases of a cluster: one live probe per target, queued on a cluster's two
// reading sessions, could not finish within the deadline at 1,000 targets, and /readyz
// answered 503 with every target up (docs/monitoring.md, readiness).
import type { TargetConfig } from '../core/config.ts';
import type { SnapshotProvider, StatusSnapshot } from '../monitoring/sampler.ts';
import { postgresFailureMessage, postgresLabel } from '../runner/postgres-failure.ts';
import { redisFailureMessage, settleWithin } from '../runner/redis-failure.ts';
import type { Runtime } from '../runner/runtime.ts';
import type { Handler } from './handlers.ts';

/** Every check of /readyz is given up after this. */
export const READY_DEADLINE_MS = 3000;

/** A snapshot older than this many sampler intervals no longer vouches for the targets. */
const STALE_INTERVALS = 3;

interface Check {
  ok: boolean;
  error?: string;
  /** cluster:…: the target its live probe ran on. */
  target?: string;
  /** snapshot: how old the snapshot the targets' checks come from is. */
  ageSeconds?: number;
}

const within = <T>(p: Promise<T>) =>
  settleWithin(p, READY_DEADLINE_MS, () => new Error(`timed out after ${READY_DEADLINE_MS / 1000}s`));

/** The target each cluster's live probe runs on: the run history's if it is there, else one the snapshot saw up. */
function probedTargets(rt: Runtime, snapshot: StatusSnapshot | undefined): Map<string, TargetConfig> {
  const reachable = new Set(snapshot?.targets.filter((t) => t.reachable).map((t) => t.target));
  const chosen = new Map<string, TargetConfig>();
  const rank = (t: TargetConfig) => (t.name === rt.config.history.target ? 2 : reachable.has(t.name) ? 1 : 0);
  for (const t of rt.config.targets.values()) {
    const had = chosen.get(t.cluster);
    if (!had || rank(t) > rank(had)) chosen.set(t.cluster, t);
  }
  return chosen;
}

/** The kept snapshot; before the first one (or when every answer reads afresh), a reading within the deadline. */
async function snapshotOf(health: SnapshotProvider): Promise<StatusSnapshot | Error> {
  const kept = health.kept();
  if (kept) return kept;
  try {
    return await within(health.read());
  } catch (err) {
    return new Error(`no health reading yet: ${health.describeError(err)}`);
  }
}

/** Whether the snapshot the targets' checks come from is there and recent: three intervals at most. */
function snapshotCheck(snapshot: StatusSnapshot | Error, intervalMs: number): Check {
  if (snapshot instanceof Error) return { ok: false, error: snapshot.message };
  const ageMs = Math.max(0, Date.now() - snapshot.at);
  const ageSeconds = Math.round(ageMs / 1000);
  if (intervalMs <= 0 || ageMs <= STALE_INTERVALS * intervalMs) return { ok: true, ageSeconds };
  const error = `the latest health reading is ${ageSeconds} s old (one is taken every ${intervalMs / 1000} s)`;
  return { ok: false, ageSeconds, error };
}

export async function readinessChecks(
  rt: Runtime,
  health: SnapshotProvider | undefined,
): Promise<Record<string, Check>> {
  const checks: Record<string, Check> = {};
  const snapshotRead = health ? snapshotOf(health) : Promise.resolve(undefined);
  // The live probes choose their target from the snapshot kept now; they do not wait for a first one.
  const probed = probedTargets(rt, health?.kept());
  const live = new Map<string, Check>();
  await Promise.all([
    within(rt.queues.connection.ping()).then(
      () => (checks.redis = { ok: true }),
      (err: unknown) =>
        (checks.redis = { ok: false, error: redisFailureMessage(rt.config, err) ?? (err as Error).message }),
    ),
    ...[...probed].map(([cluster, t]) =>
      within(rt.connections.probe(t.name)).then(
        () => live.set(cluster, { ok: true, target: t.name }),
        (err: Error) =>
          live.set(cluster, {
            ok: false,
            target: t.name,
            error: postgresFailureMessage(t, err) ?? `${postgresLabel(t)} ${err.message}`,
          }),
      ),
    ),
    snapshotRead,
  ]);
  const snapshot = await snapshotRead;
  for (const [cluster, check] of live) checks[`cluster:${cluster}`] = check;
  if (health) checks.snapshot = snapshotCheck(snapshot!, health.intervalMs);
  const byTarget = new Map(snapshot && !(snapshot instanceof Error) ? snapshot.targets.map((t) => [t.target, t]) : []);
  for (const t of rt.config.targets.values()) {
    const probe = live.get(t.cluster)!;
    // The probed target's live answer is newer than any snapshot.
    if (probe.target === t.name && !probe.ok) checks[`target:${t.name}`] = { ok: false, error: probe.error };
    else if (!health) checks[`target:${t.name}`] = { ok: probe.ok };
    else {
      const read = byTarget.get(t.name);
      checks[`target:${t.name}`] = !read
        ? { ok: false, error: 'not read yet' }
        : read.reachable
          ? { ok: true }
          : { ok: false, error: read.error ?? 'unreachable' };
    }
  }
  return checks;
}

/** Redis, each cluster and every target (from the snapshot); 503 when any is not. */
export const readiness: Handler = async ({ rt, health }, req) => {
  const checks = await readinessChecks(rt, health);
  const ok = Object.values(checks).every((c) => c.ok);
  // Without a token only the verdict: which services and errors stay private.
  return { status: ok ? 200 : 503, body: req.role ? { ok, checks } : { ok } };
};
