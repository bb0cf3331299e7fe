// One screen of state for `pgmaint status` and GET /api/status: queues and workers,
// open alerts, each target's newest backups and drill with their ages, archive lag,
// recovery window, and each partitioned table's runway and the partitions retention left
// outside it (from the retention journal, even once no policy names the table). Read from
// the health snapshot (shared state only), so any process can answer; the report says how
// old its snapshot is.
import type { Incident } from './alerts.ts';
import type { StatusSnapshot } from './sampler.ts';

/** Where a report's snapshot comes from: a sampler's (the server's, or stored in Redis), or a reading of its own. */
export interface SnapshotSource {
  read(): Promise<StatusSnapshot>;
  describeError(err: unknown): string;
}
import { scopeText } from '../governor/controls.ts';

export interface StatusReport {
  /** When this report was made. */
  at: string;
  /** When the health snapshot it shows was taken, and how old it was then. */
  sampledAt: string;
  ageSeconds: number;
  /** snapshot: a sampler's (kept every 30 s by the server); reading: taken for this report. */
  source: 'snapshot' | 'reading';
  queues: {
    queue: string;
    workers: number;
    waiting: number;
    active: number;
    delayed: number;
    failed: number;
    /** It has schedules or waiting work, and no worker serves it. */
    unserved: boolean;
  }[];
  alerts: (Pick<Incident, 'rule' | 'severity' | 'summary' | 'since'> & { targets?: string[] })[];
  targets: {
    target: string;
    /** It answered in the reading; when not, `error` says why (its backups below still stand). */
    reachable: boolean;
    error?: string;
    dumpAgeSeconds: number | null;
    baseBackupAgeSeconds: number | null;
    drill: { ok: boolean; ageSeconds: number; rtoSeconds: number | null; rpoSeconds: number | null } | null;
    archiveLagSeconds: number | null;
    recoveryWindowSeconds: number | null;
  }[];
  partitions: {
    target: string;
    table: string;
    runwaySeconds: number | null;
    defaultRows: number | null;
    /** Partitions a retention run took out and left outside the table (the retention journal's record). */
    strandedPartitions: string[];
    /** A partition policy names the table; false: only the retention journal does. */
    policy: boolean;
    error?: string;
  }[];
  /** The load governor: holds by hand in force, runs held now, and the last deferrals. */
  governor: {
    holds: { what: string; reason: string | null; since: string; until: string }[];
    held: {
      job: string;
      jobId: string;
      target: string;
      state: 'throttled' | 'paused';
      reason: string;
      heldSeconds: number;
      unit: string;
      started: boolean;
    }[];
    deferred: { job: string; target: string; at: string; reason: string; unit: string }[];
  };
  /** Parts that could not be read (the rest of the report stands). */
  errors: Record<string, string>;
}

/** The report; alerts that cannot be read (they live in Redis) are named in `errors.alerts`. */
export async function statusReport(
  health: SnapshotSource,
  openAlerts: Promise<Incident[]>,
  source: StatusReport['source'],
): Promise<StatusReport> {
  const alertsError: Record<string, string> = {};
  const [s, alerts] = await Promise.all([
    health.read(),
    openAlerts.catch((err: unknown) => {
      alertsError.alerts = health.describeError(err);
      return [];
    }),
  ]);
  const age = (at: number | null | undefined) => (at ? Math.max(0, Math.round((s.at - at) / 1000)) : null);
  const severity = { critical: 0, warning: 1 };
  const backups = new Map(s.backups.map((b) => [b.target, b]));
  const now = Date.now();
  return {
    at: new Date(now).toISOString(),
    sampledAt: new Date(s.at).toISOString(),
    ageSeconds: Math.max(0, Math.round((now - s.at) / 1000)),
    source,
    queues: s.queues.map((q) => ({
      queue: q.queue,
      workers: q.workers,
      waiting: q.counts.waiting + q.counts.prioritized,
      active: q.counts.active,
      delayed: q.counts.delayed,
      failed: q.counts.failed,
      unserved: q.needsWorker && q.workers === 0,
    })),
    alerts: alerts
      .sort((a, b) => severity[a.severity] - severity[b.severity] || a.since.localeCompare(b.since))
      .map(({ rule, severity, summary, since, targets }) => ({
        rule,
        severity,
        summary,
        since,
        ...(targets ? { targets } : {}),
      })),
    // Every target, each on its own: one that cannot be reached, or whose backups cannot be
    // read, is marked so and leaves the others whole.
    targets: s.targets.map((t) => {
      const b = backups.get(t.target);
      return {
        target: t.target,
        reachable: t.reachable,
        ...(t.error ? { error: t.error } : {}),
        dumpAgeSeconds: b?.newestDumpAgeSeconds ?? null,
        baseBackupAgeSeconds: b?.newestBaseBackupAgeSeconds ?? null,
        drill: b?.drill
          ? {
              ok: b.drill.ok,
              ageSeconds: age(b.drill.finishedAt) ?? 0,
              rtoSeconds: b.drill.rtoSeconds,
              rpoSeconds: b.drill.rpoSeconds,
            }
          : null,
        archiveLagSeconds: b?.archive?.lagSeconds ?? null,
        recoveryWindowSeconds: b?.recoveryWindowSeconds ?? null,
      };
    }),
    partitions: s.partitions.map((p) => ({
      target: p.target,
      table: p.table,
      runwaySeconds: p.runwaySeconds,
      defaultRows: p.defaultRows,
      strandedPartitions: p.unfinishedPartitions ?? [],
      policy: p.policy,
      ...(p.error ? { error: p.error } : {}),
    })),
    governor: {
      holds: s.governor.holds.map((h) => ({
        what: scopeText(h.scope),
        reason: h.reason,
        since: new Date(h.since).toISOString(),
        until: new Date(h.until).toISOString(),
      })),
      held: s.governor.held.map((h) => ({
        job: h.job,
        jobId: h.jobId,
        target: h.target,
        state: h.state,
        reason: h.reason,
        heldSeconds: Math.max(0, Math.round((s.at - h.since) / 1000)),
        unit: h.unit,
        started: h.started,
      })),
      deferred: s.governor.deferred.map((d) => ({
        job: d.job,
        target: d.target,
        at: new Date(d.at).toISOString(),
        reason: d.reason,
        unit: d.unit,
      })),
    },
    errors: { ...s.errors, ...alertsError },
  };
}
