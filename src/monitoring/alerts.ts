// Alerts: rules judge the health snapshot; each firing condition is an incident
// kept in Redis, so it is announced once (not on every evaluation, not again by a
// second monitor or after a restart) and its end is announced as resolved. The
// monitor runs in the server (or `pgmaint monitor`), never in the workers whose
// silence the dead-man switch is there to notice.
import { randomUUID } from 'node:crypto';
import type { Config } from '../core/config.ts';
import type { ALERT_RULES } from '../core/config.ts';
import type { HealthReader, HealthSnapshot } from './health.ts';
import type { Logger } from '../core/logger.ts';
import type { Runtime } from '../runner/runtime.ts';

export type AlertRule = (typeof ALERT_RULES)[number];

export interface Alert {
  /** Identifies the incident: the same key on the next evaluation is the same incident. */
  key: string;
  rule: AlertRule;
  severity: 'critical' | 'warning';
  summary: string;
  labels: Record<string, string>;
  /** Fires only once the condition has held this long. */
  forMs?: number;
}

export interface Incident extends Alert {
  since: string;
}

const iso = (msValue: number) => new Date(msValue).toISOString();
const minutes = (s: number) => (s >= 7200 ? `${(s / 3600).toFixed(1)} h` : `${Math.round(s / 60)} min`);

/** The conditions that hold in this snapshot. Pure: the tests feed it snapshots. */
export function judge(s: HealthSnapshot, cfg: Config['alerts']): Alert[] {
  const out: Alert[] = [];
  const now = s.at;
  for (const j of s.jobs) {
    if (j.lastOutcome === 'succeeded') continue;
    out.push({
      key: `job-failed:${j.job}:${j.target}`,
      rule: 'job-failed',
      severity: 'critical',
      summary:
        `${j.job} on ${j.target} ` +
        `${j.lastOutcome === 'timed_out' ? 'timed out' : 'failed after its last attempt'}` +
        `${j.consecutiveFailures > 1 ? ` (${j.consecutiveFailures} runs in a row)` : ''}: ` +
        `${j.lastError ?? 'no error recorded'}`,
      labels: { job: j.job, target: j.target },
    });
  }
  for (const j of s.jobs) {
    // integrity-check fails with "corruption found in …" only when amcheck found it.
    if (j.job !== 'integrity-check' || j.lastOutcome === 'succeeded' || !/^corruption found/.test(j.lastError ?? ''))
      continue;
    out.push({
      key: `corruption:${j.target}`,
      rule: 'corruption',
      severity: 'critical',
      summary: `data corruption on ${j.target}: ${j.lastError}`,
      labels: { target: j.target },
    });
  }
  for (const sc of s.schedules) {
    if (sc.dueBy === null || now <= sc.dueBy + cfg.deadmanGraceMs) continue;
    out.push({
      key: `deadman:${sc.id}`,
      rule: 'deadman',
      severity: 'critical',
      summary:
        `schedule ${sc.id} (${sc.job} on ${sc.target}) has not succeeded ` +
        `${sc.lastSuccess ? `since ${iso(sc.lastSuccess)}` : 'since it was first seen'}; a success was due by ` +
        `${iso(sc.dueBy)}${sc.nextRun === null ? ' and the schedule is missing from Redis' : ''}`,
      labels: { schedule: sc.id, job: sc.job, target: sc.target },
    });
  }
  for (const q of s.queues) {
    if (q.needsWorker && q.workers === 0) {
      out.push({
        key: `no-worker:${q.queue}`,
        rule: 'no-worker',
        severity: 'critical',
        summary:
          `no worker is connected to queue ${q.queue} (${q.counts.waiting + q.counts.prioritized} waiting, ` +
          `${q.counts.delayed} delayed)`,
        labels: { queue: q.queue },
        forMs: cfg.noWorkerForMs,
      });
    }
    for (const a of q.active) {
      const ran = now - a.startedAt;
      if (ran <= a.maxRunMs + cfg.overrunGraceMs) continue;
      out.push({
        key: `overrun:${q.queue}:${a.id}`,
        rule: 'overrun',
        severity: 'critical',
        summary:
          `job ${a.id} in ${q.queue} has been active for ${minutes(ran / 1000)}, past its maximum run time ` +
          `of ${minutes(a.maxRunMs / 1000)}: its worker may be hung`,
        labels: { queue: q.queue, jobId: a.id },
      });
    }
  }
  for (const b of s.backups) {
    // "None yet" is the dead-man switch's to report (the backup schedule has not succeeded).
    const kinds = [
      { kind: 'dump', age: b.newestDumpAgeSeconds, max: cfg.maxDumpAgeHours, expected: b.dumpsExpected },
      { kind: 'base', age: b.newestBaseBackupAgeSeconds, max: cfg.maxBaseBackupAgeHours, expected: b.baseExpected },
    ];
    for (const k of kinds) {
      if (!k.expected || k.age === null || k.age <= k.max * 3600) continue;
      out.push({
        key: `backup-age:${b.target}:${k.kind}`,
        rule: 'backup-age',
        severity: 'critical',
        summary:
          `the newest verified ${k.kind === 'dump' ? 'dump' : 'base backup'} of ${b.target} is ` +
          `${minutes(k.age)} old (limit ${k.max} h)`,
        labels: { target: b.target, kind: k.kind },
      });
    }
    if (b.archive?.lagSeconds != null && b.archive.lagSeconds > cfg.maxArchiveLagSeconds) {
      out.push({
        key: `archive-lag:${b.target}`,
        rule: 'archive-lag',
        severity: 'critical',
        summary:
          `WAL archive of ${b.target} lags ${b.archive.lagSeconds} s (${b.archive.lagSegments ?? '?'} ` +
          `segments) at ${iso(b.archive.checkedAt)}; limit ${cfg.maxArchiveLagSeconds} s`,
        labels: { target: b.target },
      });
    }
  }
  for (const p of s.partitions) {
    if (p.runwaySeconds !== null && p.runwaySeconds < cfg.minPartitionRunwayDays * 86_400) {
      out.push({
        key: `partition-runway:${p.target}:${p.table}`,
        rule: 'partition-runway',
        severity: p.runwaySeconds === 0 ? 'critical' : 'warning',
        summary:
          p.runwaySeconds === 0
            ? `${p.table} on ${p.target} has no partition for now: new rows go to DEFAULT (or fail)`
            : `${p.table} on ${p.target} has partitions for only ${minutes(p.runwaySeconds)} ahead (limit ` +
              `${cfg.minPartitionRunwayDays} days)`,
        labels: { target: p.target, table: p.table },
      });
    }
    if (p.defaultRows) {
      out.push({
        key: `default-rows:${p.target}:${p.table}`,
        rule: 'default-rows',
        severity: 'warning',
        summary:
          `${p.defaultRows}${p.defaultRows >= 100_000 ? '+' : ''} rows of ${p.table} on ${p.target} sit in ` +
          `its DEFAULT partition`,
        labels: { target: p.target, table: p.table },
      });
    }
    if (p.unfinishedDetaches) {
      out.push({
        key: `retention-orphan:${p.target}:${p.table}`,
        rule: 'retention-orphan',
        severity: 'critical',
        summary:
          `${p.unfinishedDetaches} partition(s) of ${p.table} on ${p.target} were taken out by a retention ` +
          `run that did not finish (${(p.unfinishedPartitions ?? []).join(', ')}); ` +
          (p.policy
            ? 'the next drop-expired-partitions run finishes them'
            : `no partition policy names ${p.table} any more, so no run will: restore its policy to let ` +
              'drop-expired-partitions finish them, or re-attach or drop them by hand (the retention journal ' +
              'keeps their bounds)'),
        labels: { target: p.target, table: p.table },
      });
    }
    if (p.error) {
      out.push({
        key: `health-read:partitions:${p.target}:${p.table}`,
        rule: 'health-read',
        severity: 'warning',
        summary: `cannot read the partitions of ${p.table} on ${p.target}: ${p.error}`,
        labels: { target: p.target, table: p.table },
      });
    }
  }
  for (const [part, message] of Object.entries(s.errors)) {
    out.push({
      key: `health-read:${part}`,
      rule: 'health-read',
      severity: 'critical',
      summary: `the monitor cannot read ${part}: ${message}`,
      labels: { part },
      forMs: cfg.noWorkerForMs,
    });
  }
  return out.filter((a) => !(cfg.disabled as readonly string[]).includes(a.rule));
}

/** Incidents whose evidence could not be read are neither fired nor resolved this time. */
function uncertain(key: string, s: HealthSnapshot): boolean {
  const failed = (part: string) => part in s.errors;
  if (key.startsWith('job-failed:') || key.startsWith('corruption:')) return failed('history');
  if (key.startsWith('deadman:')) return failed('history') || failed('schedules');
  if (key.startsWith('no-worker:') || key.startsWith('overrun:')) return failed('queues');
  if (key.startsWith('backup-age:') || key.startsWith('archive-lag:')) return failed('backups');
  const table = /^(partition-runway|default-rows|retention-orphan):([^:]+):(.+)$/.exec(key);
  if (!table) return false;
  const [, rule, target, name] = table;
  // Stranded partitions come from the target's retention journal; runway and DEFAULT rows from the policy's row.
  if (rule === 'retention-orphan' && failed(`journal:${target}`)) return true;
  return s.partitions.some((p) => p.target === target && p.table === name && p.error !== undefined);
}

export type Notify = (body: WebhookBody) => Promise<void>;

export interface WebhookBody {
  /** Slack shows this; generic receivers read `status` and `alert`. */
  text: string;
  status: 'firing' | 'resolved';
  alert: Incident & { resolvedAt?: string };
  source: 'pgmaint';
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
    private readonly health: HealthReader,
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

  private async send(status: WebhookBody['status'], incident: Incident, now: number): Promise<boolean> {
    const icon =
      status === 'firing'
        ? incident.severity === 'critical'
          ? ':rotating_light:'
          : ':warning:'
        : ':white_check_mark:';
    const text =
      `${icon} [${status === 'firing' ? 'FIRING' : 'RESOLVED'}] pgmaint: ` +
      `${incident.summary}${status === 'resolved' ? ` (since ${incident.since})` : ''}`;
    const body: WebhookBody = {
      text,
      status,
      alert: status === 'resolved' ? { ...incident, resolvedAt: iso(now) } : incident,
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
   * One evaluation: fires new incidents, resolves ended ones. Only one monitor
   * evaluates at a time (a Redis lock), so two servers never both announce.
   */
  async evaluate(now = Date.now()): Promise<{ fired: string[]; resolved: string[]; open: string[] } | undefined> {
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
      const resolved: string[] = [];
      for (const [key, alert] of current) {
        if (open.has(key)) continue;
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
      for (const key of Object.keys(pending))
        if (!current.has(key) && !uncertain(key, snapshot)) await this.redis.hdel(this.pendingKey, key);
      for (const [key, incident] of open) {
        if (current.has(key) || uncertain(key, snapshot)) continue;
        if (await this.send('resolved', incident, now)) {
          await this.redis.hdel(this.openKey, key);
          resolved.push(key);
        }
      }
      return { fired, resolved, open: [...open.keys(), ...fired].filter((k) => !resolved.includes(k)) };
    } finally {
      const holder = await this.redis.get(this.lockKey);
      if (holder === token) await this.redis.del(this.lockKey);
    }
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
