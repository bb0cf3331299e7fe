// What the governor does to runs, in Redis so the server's /metrics, `pgmaint status` and
// the alert monitor see the whole fleet: each held run with its state and reason (while
// it is held; its worker refreshes it), seconds held by job, target and reason, and each
// job's last deferral on a target (until a run of it completes undeferred).
import type { RedisClient } from '../runner/connections.ts';
import { type Hold, holdsKey } from './controls.ts';
import type { ReasonKind } from './judge.ts';

const SEP = '\u001f';
const runsKey = (prefix: string) => `${prefix}:governor:runs`;
const throttledKey = (prefix: string) => `${prefix}:governor:throttled-seconds`;
const deferredKey = (prefix: string) => `${prefix}:governor:deferred`;

/** A run that waits now: at a unit, in a stream, or before it starts (a maintenance pause). */
export interface HeldRun {
  queue: string;
  jobId: string;
  job: string;
  target: string;
  state: 'throttled' | 'paused';
  kind: ReasonKind;
  reason: string;
  /** Since when it waits at one stretch (epoch ms). */
  since: number;
  /** Past this stretch's length the run stops as deferred (null: it has not started). */
  windowSeconds: number | null;
  unit: string;
  started: boolean;
  worker: string;
  /** Refreshed while it waits; an entry not refreshed for a while is a lost worker's. */
  updatedAt: number;
}

export interface DeferredRun {
  queue: string;
  jobId: string;
  job: string;
  target: string;
  at: number;
  reason: string;
  limit: string;
  unit: string;
  heldSeconds: number;
}

export interface ThrottledSeconds {
  job: string;
  target: string;
  reason: ReasonKind;
  seconds: number;
}

/** Everything the governor keeps in Redis, as /metrics, status and alerts read it. */
export interface GovernorHealth {
  holds: Hold[];
  held: HeldRun[];
  deferred: DeferredRun[];
  throttled: ThrottledSeconds[];
}

/** A held run's entry older than this is a lost worker's, and ignored. */
export const STALE_AFTER_MS = 120_000;

const parse = <T>(text: string): T | undefined => {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
};

export class Board {
  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
  ) {}

  async held(run: HeldRun): Promise<void> {
    await this.redis.hset(runsKey(this.prefix), `${run.queue}/${run.jobId}`, JSON.stringify(run));
  }

  async released(queue: string, jobId: string): Promise<void> {
    await this.redis.hdel(runsKey(this.prefix), `${queue}/${jobId}`);
  }

  async addSeconds(job: string, target: string, kind: ReasonKind, seconds: number): Promise<void> {
    if (seconds > 0) await this.redis.hincrbyfloat(throttledKey(this.prefix), [job, target, kind].join(SEP), seconds);
  }

  async deferred(d: DeferredRun): Promise<void> {
    await this.redis.hset(deferredKey(this.prefix), `${d.job}${SEP}${d.target}`, JSON.stringify(d));
  }

  /** A run of the job completed undeferred on the target: its last deferral is over. */
  async caughtUp(job: string, target: string): Promise<void> {
    await this.redis.hdel(deferredKey(this.prefix), `${job}${SEP}${target}`);
  }
}

/** The governor's part of a health reading; lost workers' entries are dropped. */
export async function readGovernor(redis: RedisClient, prefix: string, now = Date.now()): Promise<GovernorHealth> {
  const [holds, runs, deferred, throttled] = await Promise.all([
    redis.hgetall(holdsKey(prefix)),
    redis.hgetall(runsKey(prefix)),
    redis.hgetall(deferredKey(prefix)),
    redis.hgetall(throttledKey(prefix)),
  ]);
  const stale = Object.entries(runs)
    .filter(([, t]) => now - (parse<HeldRun>(t)?.updatedAt ?? 0) > STALE_AFTER_MS)
    .map(([f]) => f);
  if (stale.length) await redis.hdel(runsKey(prefix), ...stale);
  return {
    holds: Object.values(holds)
      .flatMap((t) => parse<Hold>(t) ?? [])
      .filter((h) => h.until > now)
      .sort((a, b) => a.since - b.since),
    held: Object.entries(runs)
      .filter(([f]) => !stale.includes(f))
      .flatMap(([, t]) => parse<HeldRun>(t) ?? [])
      .sort((a, b) => a.since - b.since),
    deferred: Object.values(deferred).flatMap((t) => parse<DeferredRun>(t) ?? []),
    throttled: Object.entries(throttled).map(([field, n]) => {
      const [job, target, reason] = field.split(SEP) as [string, string, ReasonKind];
      return { job, target, reason, seconds: Number(n) };
    }),
  };
}
