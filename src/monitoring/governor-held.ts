// The governor-held alert's findings (alert-rules.ts): runs the load governor deferred, and
// runs held now for longer than their window (docs/governor.md).
import type { HealthSnapshot } from './health.ts';

export interface HeldFinding {
  job: string;
  target: string;
  /** Held now (not a deferral already recorded). */
  live: boolean;
  summary: string;
}

const iso = (msValue: number) => new Date(msValue).toISOString();
const minutes = (s: number) => (s >= 7200 ? `${(s / 3600).toFixed(1)} h` : `${Math.round(s / 60)} min`);

export function governorHeld(s: HealthSnapshot): HeldFinding[] {
  const out: HeldFinding[] = s.governor.deferred.map((d) => ({
    job: d.job,
    target: d.target,
    live: false,
    summary:
      `${d.job} on ${d.target} was held back ${minutes(d.heldSeconds)}, past ${d.limit}, and stopped deferred at ` +
      `${iso(d.at)} before ${d.unit} (${d.reason}); the next run goes on from there`,
  }));
  for (const r of s.governor.held) {
    const seconds = (s.at - r.since) / 1000;
    if (r.windowSeconds === null || seconds <= r.windowSeconds) continue;
    out.push({
      job: r.job,
      target: r.target,
      live: true,
      summary:
        `${r.job} ${r.jobId} on ${r.target} has been ${r.state} for ${minutes(seconds)}, longer than its window ` +
        `of ${minutes(r.windowSeconds)}: ${r.reason}`,
    });
  }
  return out;
}
