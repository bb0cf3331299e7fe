// The governor's state machine, as a pure function: a reading of the target's signals,
// the run's policy and the holds by hand give the run's state now. running: go on;
// throttled (with its reason): wait before the next unit; paused: held by hand; critical:
// abort the run (retryable). Tests feed it readings.
import type { GovernorPolicy } from '../core/governor-policy.ts';

/** What the sampler read on a target at one instant (sampler.ts). */
export interface Reading {
  at: number;
  /** `select 1`, timed: the median of the last three, and the rolling quiet baseline. */
  probeMs: number | null;
  baselineMs: number | null;
  /** Active sessions not ours, and sessions waiting on locks not held by ours; null when not readable. */
  active: number | null;
  lockWaits: number | null;
  standbys: { name: string; lagSeconds: number; behindBytes: number }[];
  custom: number | null;
  /** Why the custom statement (customSql) gave no number: it failed, or returned no number. */
  customError?: string;
  /** The reading failed (the target did not answer): no signal holds a run then. */
  error?: string;
}

/** Low-cardinality names of reasons: metric labels, and how a change of reason is noticed. */
export type ReasonKind = 'paused' | 'replica_lag' | 'active' | 'lock_waits' | 'probe' | 'custom' | 'permit';

export type Verdict =
  | { state: 'running' }
  | { state: 'throttled' | 'paused' | 'critical'; kind: ReasonKind; reason: string };

export const RUNNING: Verdict = { state: 'running' };

/** A hold by hand as the judge sees it: already described ("paused by hand …"). */
export interface HoldNote {
  reason: string;
}

/** 42 s, 4.5 s, 0.8 s: whole seconds from ten up. */
export const secondsText = (s: number) => `${s >= 10 ? Math.round(s) : Math.round(s * 10) / 10} s`;
const msText = (ms: number) => `${ms >= 10 ? Math.round(ms) : Math.round(ms * 10) / 10} ms`;

interface Signal {
  kind: ReasonKind;
  /** The measured value and its text, or undefined when the signal is off or unread. */
  check(limit: number): string | undefined;
  limit: number | null;
  critical: number | null;
}

function signals(r: Reading, p: GovernorPolicy, readOnly: boolean): Signal[] {
  const lag = r.standbys.reduce<{ name: string; lagSeconds: number } | undefined>(
    (worst, s) => (worst && worst.lagSeconds >= s.lagSeconds ? worst : s),
    undefined,
  );
  return [
    {
      kind: 'replica_lag',
      limit: readOnly ? null : p.maxReplicaLagSeconds,
      critical: readOnly ? null : p.criticalReplicaLagSeconds,
      check: (limit) =>
        lag && lag.lagSeconds > limit
          ? `replica lag ${secondsText(lag.lagSeconds)} > ${secondsText(limit)} (standby ${lag.name})`
          : undefined,
    },
    {
      kind: 'active',
      limit: p.maxActive,
      critical: p.criticalActive,
      check: (limit) => (r.active !== null && r.active > limit ? `active sessions ${r.active} > ${limit}` : undefined),
    },
    {
      kind: 'lock_waits',
      limit: p.maxLockWaits,
      critical: null,
      check: (limit) =>
        r.lockWaits !== null && r.lockWaits > limit ? `sessions waiting on locks ${r.lockWaits} > ${limit}` : undefined,
    },
    {
      kind: 'probe',
      limit: p.maxProbeRatio,
      critical: p.criticalProbeRatio,
      check: (ratio) => {
        if (r.probeMs === null || r.baselineMs === null) return undefined;
        const limit = Math.max(ratio * r.baselineMs, p.minProbeMs);
        return r.probeMs > limit
          ? `probe ${msText(r.probeMs)} > ${ratio} × quiet ${msText(r.baselineMs)}` +
              (limit > ratio * r.baselineMs ? ` and > minProbeMs ${p.minProbeMs}` : '')
          : undefined;
      },
    },
    {
      kind: 'custom',
      limit: p.customMax,
      critical: p.customCritical,
      check: (limit) => (r.custom !== null && r.custom > limit ? `custom signal ${r.custom} > ${limit}` : undefined),
    },
  ];
}

/**
 * The run's state: critical first (it aborts even a run held by hand), then a hold by
 * hand, then the first signal over its limit. A run of a policy with `enabled: false`
 * is only ever paused by hand; a reading that failed holds nothing.
 */
export function judge(
  reading: Reading | undefined,
  p: GovernorPolicy,
  opts: { readOnly?: boolean; hold?: HoldNote } = {},
): Verdict {
  const live = p.enabled && reading && !reading.error ? signals(reading, p, opts.readOnly ?? false) : [];
  for (const s of live) {
    const why = s.critical === null ? undefined : s.check(s.critical);
    if (why) return { state: 'critical', kind: s.kind, reason: why };
  }
  if (opts.hold) return { state: 'paused', kind: 'paused', reason: opts.hold.reason };
  for (const s of live) {
    const why = s.limit === null ? undefined : s.check(s.limit);
    if (why) return { state: 'throttled', kind: s.kind, reason: why };
  }
  return RUNNING;
}

/** "throttled: replica lag 42 s > 30 s", "paused: by hand until …": the line Bull Board shows. */
export const verdictText = (v: Verdict) => (v.state === 'running' ? 'running' : `${v.state}: ${v.reason}`);
