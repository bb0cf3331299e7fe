// Holds by hand, in Redis so every worker and server sees them: on one job, on a job's
// queue, or on every governed job (the maintenance pause: "no maintenance for the next
// 2 h"). Each has an expiry it cannot outlive, read as the end of the hold whether or not
// anything removed it yet. A running run waits at its next unit; one that has not started
// waits delayed. A log of past holds lets the dead-man switch allow for the time they held.
import type { RedisClient } from '../runner/connections.ts';

export type HoldScope = { kind: 'all' } | { kind: 'queue'; queue: string } | { kind: 'job'; queue: string; id: string };

export interface Hold {
  scope: HoldScope;
  /** Why, as the operator gave it ("during the sale"). */
  reason: string | null;
  since: number;
  until: number;
}

/** The longest a hold may last: it has to end. */
export const MAX_HOLD_MS = 7 * 86_400_000;
/** Past holds kept for the dead-man switch. */
const LOG_KEEP_MS = 8 * 86_400_000;

export const holdsKey = (prefix: string) => `${prefix}:governor:holds`;
const logKey = (prefix: string) => `${prefix}:governor:hold-log`;

export function scopeKey(s: HoldScope): string {
  return s.kind === 'all' ? 'all' : s.kind === 'queue' ? `queue:${s.queue}` : `job:${s.queue}:${s.id}`;
}

/** "every governed job", "queue vacuum-analyze", "job vacuum-analyze/17". */
export function scopeText(s: HoldScope): string {
  return s.kind === 'all' ? 'every governed job' : s.kind === 'queue' ? `queue ${s.queue}` : `job ${s.queue}/${s.id}`;
}

/** The line a held run shows: "paused by hand (every governed job) until 2026-…Z: during the sale". */
export function holdText(h: Hold): string {
  return (
    `by hand (${scopeText(h.scope)}) until ${new Date(h.until).toISOString().replace(/\.\d{3}Z$/, 'Z')}` +
    (h.reason ? `: ${h.reason}` : '')
  );
}

/** The hold that applies to a run, the one that ends last when several do. */
export function holdFor(holds: readonly Hold[], queue: string, id: string | undefined, now = Date.now()) {
  return holds
    .filter((h) => h.until > now)
    .filter(
      (h) =>
        h.scope.kind === 'all' ||
        (h.scope.kind === 'queue' && h.scope.queue === queue) ||
        (h.scope.kind === 'job' && h.scope.queue === queue && h.scope.id === id),
    )
    .sort((a, b) => b.until - a.until)[0];
}

export class Controls {
  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
  ) {}

  /** The holds in force; ended ones are removed on the way. */
  async list(now = Date.now()): Promise<Hold[]> {
    const all = await this.redis.hgetall(holdsKey(this.prefix));
    const live: Hold[] = [];
    const ended: string[] = [];
    for (const [field, text] of Object.entries(all)) {
      const h = parseHold(text);
      if (h && h.until > now) live.push(h);
      else ended.push(field);
    }
    if (ended.length) await this.redis.hdel(holdsKey(this.prefix), ...ended);
    return live.sort((a, b) => a.since - b.since);
  }

  /** Sets (or replaces) the hold on a scope for `forMs`. */
  async set(scope: HoldScope, forMs: number, reason: string | null, now = Date.now()): Promise<Hold> {
    const hold: Hold = { scope, reason, since: now, until: now + Math.min(forMs, MAX_HOLD_MS) };
    const replaced = parseHold((await this.redis.hget(holdsKey(this.prefix), scopeKey(scope))) ?? '');
    if (replaced && replaced.until > now) hold.since = replaced.since;
    await this.redis
      .multi()
      .hset(holdsKey(this.prefix), scopeKey(scope), JSON.stringify(hold))
      .hset(logKey(this.prefix), `${scopeKey(scope)}@${hold.since}`, JSON.stringify(hold))
      .exec();
    await this.pruneLog(now);
    return hold;
  }

  /** Ends the hold on a scope now; undefined when there was none in force. */
  async clear(scope: HoldScope, now = Date.now()): Promise<Hold | undefined> {
    const text = await this.redis.hget(holdsKey(this.prefix), scopeKey(scope));
    await this.redis.hdel(holdsKey(this.prefix), scopeKey(scope));
    const hold = parseHold(text ?? '');
    if (!hold || hold.until <= now) return undefined;
    await this.redis.hset(
      logKey(this.prefix),
      `${scopeKey(scope)}@${hold.since}`,
      JSON.stringify({ ...hold, until: now }),
    );
    return hold;
  }

  /** Holds of the last days, ended ones with the time they really ended. */
  async log(): Promise<Hold[]> {
    return Object.values(await this.redis.hgetall(logKey(this.prefix))).flatMap((t) => parseHold(t) ?? []);
  }

  private async pruneLog(now: number): Promise<void> {
    const old = Object.entries(await this.redis.hgetall(logKey(this.prefix)))
      .filter(([, t]) => (parseHold(t)?.until ?? 0) < now - LOG_KEEP_MS)
      .map(([f]) => f);
    if (old.length) await this.redis.hdel(logKey(this.prefix), ...old);
  }
}

function parseHold(text: string): Hold | undefined {
  try {
    const h = JSON.parse(text) as Hold;
    return typeof h?.until === 'number' && typeof h.since === 'number' && h.scope ? h : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long holds that apply to `queue` covered [from, to]: the dead-man switch adds it to
 * when a success is due, so a run held by a maintenance pause is not reported missing.
 */
export function heldWithin(log: readonly Hold[], queue: string, from: number, to: number): number {
  const spans = log
    .filter((h) => h.scope.kind === 'all' || (h.scope.kind === 'queue' && h.scope.queue === queue))
    .map((h) => [Math.max(h.since, from), Math.min(h.until, to)] as const)
    .filter(([a, b]) => b > a)
    .sort((a, b) => a[0] - b[0]);
  let total = 0;
  let reach = from;
  for (const [a, b] of spans) {
    const start = Math.max(a, reach);
    if (b > start) total += b - start;
    reach = Math.max(reach, b);
  }
  return total;
}
