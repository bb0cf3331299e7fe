// Alerts: the rules (alert-rules.ts) judge the health snapshot; each firing condition
// is an incident kept in Redis, so it is announced once (not on every evaluation, not
// again by a second monitor or after a restart) and its end is announced as resolved.
// An incident that covers several targets (a grouped failure) follows its targets: one
// that joins is announced, one that recovers drops out quietly, the last one's recovery
// resolves it. The monitor runs in the server (or `pgmaint monitor`), never in the
// workers whose silence the dead-man switch is there to notice.
import { randomUUID } from 'node:crypto';
import { type Alert, judge, listTargets, undecided } from './alert-rules.ts';
import type { HealthSnapshot } from './health.ts';
import type { Logger } from '../core/logger.ts';
import type { Runtime } from '../runner/runtime.ts';

export { type Alert, type AlertRule, judge, RULES } from './alert-rules.ts';

export interface Incident extends Alert {
  since: string;
}

const iso = (msValue: number) => new Date(msValue).toISOString();

export type Notify = (body: WebhookBody) => Promise<void>;

export interface WebhookBody {
  /** Slack shows this; generic receivers read `status` and `alert`. */
  text: string;
  status: 'firing' | 'resolved';
  alert: Incident & { resolvedAt?: string };
  /** On a firing post for an incident already open: the targets that joined it since (alert.targets lists all). */
  added?: string[];
  source: 'pgmaint';
}

/** Where the monitor gets its snapshot: a reading of its own (HealthReader) or the server's sampler. */
export interface HealthSource {
  take(now?: number): Promise<HealthSnapshot>;
}

export function webhookNotifier(url: string, timeoutMs = 10_000): Notify {
  return async (body) => {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`alert webhook answered ${res.status}`);
  };
}

export class AlertMonitor {
  private timer?: NodeJS.Timeout;
  private readonly openKey: string;
  private readonly pendingKey: string;
  private readonly lockKey: string;

  constructor(
    private readonly rt: Runtime,
    private readonly health: HealthSource,
    private readonly notify: Notify | undefined,
    private readonly logger: Logger = rt.logger,
  ) {
    const p = rt.config.redis.prefix;
    this.openKey = `${p}:alerts:open`;
    this.pendingKey = `${p}:alerts:pending`;
    this.lockKey = `${p}:alerts:lock`;
  }

  private get redis() {
    return this.rt.queues.connection;
  }

  async open(): Promise<Incident[]> {
    return Object.values(await this.redis.hgetall(this.openKey)).map((v) => JSON.parse(v) as Incident);
  }

  private async send(
    status: WebhookBody['status'],
    incident: Incident,
    now: number,
    added?: string[],
  ): Promise<boolean> {
    const icon =
      status === 'firing'
        ? incident.severity === 'critical'
          ? ':rotating_light:'
          : ':warning:'
        : ':white_check_mark:';
    const text =
      `${icon} [${status === 'firing' ? 'FIRING' : 'RESOLVED'}] pgmaint: ` +
      `${incident.summary}${status === 'resolved' ? ` (since ${incident.since})` : ''}` +
      `${added ? ` (now ${incident.targets?.length} targets; new: ${listTargets(added)})` : ''}`;
    const body: WebhookBody = {
      text,
      status,
      alert: status === 'resolved' ? { ...incident, resolvedAt: iso(now) } : incident,
      ...(added ? { added } : {}),
      source: 'pgmaint',
    };
    (status === 'firing' ? this.logger.warn : this.logger.info).call(
      this.logger,
      { alert: incident.key, status },
      text,
    );
    if (!this.notify) return true;
    try {
      await this.notify(body);
      return true;
    } catch (err) {
      // Not recorded as sent: the next evaluation tries again.
      this.logger.error({ err, alert: incident.key }, 'alert webhook failed; will retry');
      return false;
    }
  }

  /**
   * One evaluation: fires new incidents, follows the targets of open ones, resolves ended ones.
   * Only one monitor evaluates at a time (a Redis lock), so two servers never both announce.
   */
  async evaluate(
    now = Date.now(),
  ): Promise<{ fired: string[]; updated: string[]; resolved: string[]; open: string[] } | undefined> {
    const token = randomUUID();
    if ((await this.redis.set(this.lockKey, token, 'PX', 120_000, 'NX')) !== 'OK') return undefined;
    try {
      const snapshot = await this.health.take(now);
      const current = new Map(judge(snapshot, this.rt.config.alerts).map((a) => [a.key, a]));
      const open = new Map(
        Object.entries(await this.redis.hgetall(this.openKey)).map(([k, v]) => [k, JSON.parse(v) as Incident]),
      );
      const pending = await this.redis.hgetall(this.pendingKey);
      const fired: string[] = [];
      const updated: string[] = [];
      const resolved: string[] = [];
      for (const [key, alert] of current) {
        const was = open.get(key);
        if (was) {
          if (await this.follow(was, alert, now)) updated.push(key);
          continue;
        }
        if (alert.forMs) {
          const since = Number(pending[key] ?? now);
          if (!pending[key]) await this.redis.hset(this.pendingKey, key, String(now));
          if (now - since < alert.forMs) continue;
        }
        const incident: Incident = { ...alert, since: iso(pending[key] ? Number(pending[key]) : now) };
        if (await this.send('firing', incident, now)) {
          await this.redis.hset(this.openKey, key, JSON.stringify(incident));
          await this.redis.hdel(this.pendingKey, key);
          fired.push(key);
        }
      }
      // Pending alerts (those with forMs) are kept by key alone; their rules' evidence needs no labels.
      for (const key of Object.keys(pending)) {
        const rule = key.slice(0, key.indexOf(':')) as Alert['rule'];
        if (!current.has(key) && !undecided({ rule, labels: {} }, snapshot))
          await this.redis.hdel(this.pendingKey, key);
      }
      for (const [key, incident] of open) {
        if (current.has(key) || undecided(incident, snapshot)) continue;
        if (await this.send('resolved', incident, now)) {
          await this.redis.hdel(this.openKey, key);
          resolved.push(key);
        }
      }
      return { fired, updated, resolved, open: [...open.keys(), ...fired].filter((k) => !resolved.includes(k)) };
    } finally {
      const holder = await this.redis.get(this.lockKey);
      if (holder === token) await this.redis.del(this.lockKey);
    }
  }

  /**
   * An open incident that still holds, with its targets as they are now. Targets that joined are
   * announced (one post, `added` naming them); targets that recovered drop out of the record without a
   * post (the incident still holds for the others). Returns whether the record changed.
   */
  private async follow(was: Incident, alert: Alert, now: number): Promise<boolean> {
    const before = new Set(was.targets ?? []);
    const after = alert.targets ?? [];
    if (after.length === before.size && after.every((t) => before.has(t))) return false;
    const incident: Incident = { ...alert, since: was.since };
    const added = after.filter((t) => !before.has(t));
    // Not sent: the record keeps the old targets, so the next evaluation tries again.
    if (added.length && !(await this.send('firing', incident, now, added))) return false;
    await this.redis.hset(this.openKey, alert.key, JSON.stringify(incident));
    return true;
  }

  start(intervalMs = this.rt.config.alerts.intervalMs): void {
    const tick = () =>
      this.evaluate()
        .catch((err) => this.logger.error({ err }, 'alert evaluation failed'))
        .finally(() => {
          if (this.timer) this.timer = setTimeout(tick, intervalMs).unref();
        });
    this.timer = setTimeout(tick, Math.min(intervalMs, 5000)).unref();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
