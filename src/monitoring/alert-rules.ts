// The alert rules, as a table: what each looks at in the health snapshot, the condition
// (for failed runs: the error code, never the message), its severity and its message.
// Findings of a rule that share a key are one alert listing their targets: the same job
// failing with the same code on 100 targets is one alert, not 100.
import type { Config } from '../core/config.ts';
import type { ALERT_RULES } from '../core/config.ts';
import type { JobStatus } from '../runner/history.ts';
import type {
  BackupHealth,
  HealthSnapshot,
  PartitionHealth,
  QueueHealth,
  ScheduleHealth,
  TargetHealth,
} from './health.ts';
import { governorHeld, type HeldFinding } from './governor-held.ts';

export type AlertRule = (typeof ALERT_RULES)[number];
export type Severity = 'critical' | 'warning';

export interface Alert {
  /** Identifies the incident: the same key on the next evaluation is the same incident. */
  key: string;
  rule: AlertRule;
  severity: Severity;
  summary: string;
  labels: Record<string, string>;
  /** The targets the incident covers, sorted (rules about queues and the reading itself have none). */
  targets?: string[];
  /** Fires only once the condition has held this long. */
  forMs?: number;
}

type AlertConfig = Config['alerts'];

interface Rule<T> {
  rule: AlertRule;
  /** The items of the snapshot the rule looks at. */
  over: (s: HealthSnapshot, cfg: AlertConfig) => readonly T[];
  /** The condition: an item for which it holds is a finding. */
  when: (x: T, s: HealthSnapshot, cfg: AlertConfig) => boolean;
  severity: Severity | ((x: T) => Severity);
  /** Findings with the same key are one alert. */
  key: (x: T) => string;
  labels: (x: T) => Record<string, string>;
  /** The target a finding is about: findings sharing a key become one alert listing their targets. */
  target?: (x: T) => string;
  /** One line for the findings of one key (one finding unless the key leaves the target out). */
  message: (xs: readonly [T, ...T[]], s: HealthSnapshot, cfg: AlertConfig) => string;
  forMs?: (cfg: AlertConfig) => number;
  /** The rule's open incidents are neither fired nor resolved while this holds: their evidence was not read. */
  undecided: (labels: Record<string, string>, s: HealthSnapshot) => boolean;
}

const iso = (msValue: number) => new Date(msValue).toISOString();
const minutes = (s: number) => (s >= 7200 ? `${(s / 3600).toFixed(1)} h` : `${Math.round(s / 60)} min`);
const notRead =
  (...parts: string[]) =>
  (_labels: Record<string, string>, s: HealthSnapshot) =>
    parts.some((p) => p in s.errors);
/** One target's backups, or all of them, could not be read. */
const backupsNotRead = (labels: Record<string, string>, s: HealthSnapshot) =>
  'backups' in s.errors || `backups:${labels.target}` in s.errors;
/** The target could not be reached in this reading (its own reads were then passed by). */
const unreachable = (s: HealthSnapshot, target: string | undefined) =>
  s.targets.some((t) => t.target === target && !t.reachable);

function unreachableMessage(ts: readonly [TargetHealth, ...TargetHealth[]]): string {
  const [t] = ts;
  if (ts.length === 1) return `target ${t.target} cannot be reached (cluster ${t.cluster}): ${t.error ?? t.code}`;
  const targets = ts.map((x) => x.target).sort();
  return (
    `${ts.length} targets on cluster ${t.cluster} cannot be reached with ${t.code} (${listTargets(targets)}); ` +
    `${t.target}: ${t.error ?? t.code}`
  );
}

const tableNotRead = (labels: Record<string, string>, s: HealthSnapshot) =>
  s.partitions.some((p) => p.target === labels.target && p.table === labels.table && p.error !== undefined);

/** A job's last final outcome is a failure. */
const failed = (j: JobStatus) => j.lastOutcome !== 'succeeded';
/** A job's last final outcome is a failure with this code. */
const failedWith = (code: string) => (j: JobStatus) => failed(j) && j.lastErrorCode === code;
/** Runs recorded before error codes existed have none. */
const codeOf = (j: JobStatus) => j.lastErrorCode ?? 'UNRECORDED';

/** "a, b, c and 7 more" */
export function listTargets(targets: readonly string[], shown = 10): string {
  const head = targets.slice(0, shown).join(', ');
  return targets.length > shown ? `${head} and ${targets.length - shown} more` : head;
}

function jobFailedMessage(js: readonly [JobStatus, ...JobStatus[]]): string {
  const [j] = js;
  const how = j.lastOutcome === 'timed_out' ? 'timed out' : 'failed after its last attempt';
  if (js.length === 1) {
    const inARow = j.consecutiveFailures > 1 ? ` (${j.consecutiveFailures} runs in a row)` : '';
    return `${j.job} on ${j.target} ${how}${inARow} with ${codeOf(j)}: ${j.lastError ?? 'no error recorded'}`;
  }
  const targets = js.map((x) => x.target).sort();
  return (
    `${j.job} failed with ${codeOf(j)} on ${js.length} targets (${listTargets(targets)}); on ${j.target}: ` +
    `${j.lastError ?? 'no error recorded'}`
  );
}

function deadmanMessage(scs: readonly [ScheduleHealth, ...ScheduleHealth[]]): string {
  const [sc] = scs;
  const missing = (x: ScheduleHealth) => (x.nextRun === null ? ' and the schedule is missing from Redis' : '');
  const since = sc.lastSuccess ? `since ${iso(sc.lastSuccess)}` : 'since it was first seen';
  const one = `schedule ${sc.id} (${sc.job} on ${sc.target}) has not succeeded ${since}; a success was due by `;
  if (scs.length === 1) return `${one}${iso(sc.dueBy!)}${missing(sc)}`;
  const targets = [...new Set(scs.map((x) => x.target))].sort();
  return (
    `${scs.length} schedules of ${sc.job} on ${targets.length} targets (${listTargets(targets)}) have not ` +
    `succeeded by their due time; ${one}${iso(sc.dueBy!)}${missing(sc)}`
  );
}

function defineRule<T>(rule: Rule<T>): Rule<unknown> {
  return rule as unknown as Rule<unknown>;
}

export const RULES: readonly Rule<unknown>[] = [
  defineRule<JobStatus>({
    rule: 'job-failed',
    over: (s) => s.jobs,
    when: failed,
    severity: 'critical',
    // By job and code, not by target: one failure across the fleet is one alert.
    key: (j) => `job-failed:${j.job}:${codeOf(j)}`,
    labels: (j) => ({ job: j.job, code: codeOf(j) }),
    target: (j) => j.target,
    message: jobFailedMessage,
    undecided: notRead('history'),
  }),
  defineRule<JobStatus>({
    rule: 'corruption',
    over: (s) => s.jobs,
    when: failedWith('CORRUPTION'),
    severity: 'critical',
    key: (j) => `corruption:${j.target}`,
    labels: (j) => ({ target: j.target, job: j.job }),
    target: (j) => j.target,
    message: ([j]) => `data corruption on ${j.target}: ${j.lastError ?? `${j.job} failed with CORRUPTION`}`,
    undecided: notRead('history'),
  }),
  defineRule<ScheduleHealth>({
    rule: 'deadman',
    over: (s) => s.schedules,
    when: (sc, s, cfg) => sc.dueBy !== null && s.at > sc.dueBy + cfg.deadmanGraceMs,
    severity: 'critical',
    // By job, not by schedule: a stopped worker, or a cluster down, misses every target's
    // schedule of a job at once, and that is one alert listing them, not one per target.
    key: (sc) => `deadman:${sc.job}`,
    labels: (sc) => ({ job: sc.job }),
    target: (sc) => sc.target,
    message: deadmanMessage,
    undecided: notRead('history', 'schedules'),
  }),
  defineRule<QueueHealth>({
    rule: 'no-worker',
    over: (s) => s.queues,
    when: (q) => q.needsWorker && q.workers === 0,
    severity: 'critical',
    key: (q) => `no-worker:${q.queue}`,
    labels: (q) => ({ queue: q.queue }),
    message: ([q]) =>
      `no worker is connected to queue ${q.queue} (${q.counts.waiting + q.counts.prioritized} waiting, ` +
      `${q.counts.delayed} delayed)`,
    forMs: (cfg) => cfg.noWorkerForMs,
    undecided: notRead('queues'),
  }),
  defineRule<QueueHealth['active'][number] & { queue: string }>({
    rule: 'overrun',
    over: (s) => s.queues.flatMap((q) => q.active.map((a) => ({ ...a, queue: q.queue }))),
    when: (a, s, cfg) => s.at - a.startedAt > a.maxRunMs + cfg.overrunGraceMs,
    severity: 'critical',
    key: (a) => `overrun:${a.queue}:${a.id}`,
    labels: (a) => ({ queue: a.queue, jobId: a.id }),
    message: ([a], s) =>
      `job ${a.id} in ${a.queue} has been active for ${minutes((s.at - a.startedAt) / 1000)}, past its maximum ` +
      `run time of ${minutes(a.maxRunMs / 1000)}: its worker may be hung`,
    undecided: notRead('queues'),
  }),
  defineRule<{ b: BackupHealth; kind: 'dump' | 'base'; age: number | null; max: number; expected: boolean }>({
    rule: 'backup-age',
    over: (s, cfg) =>
      s.backups.flatMap((b) => [
        { b, kind: 'dump' as const, age: b.newestDumpAgeSeconds, max: cfg.maxDumpAgeHours, expected: b.dumpsExpected },
        {
          b,
          kind: 'base' as const,
          age: b.newestBaseBackupAgeSeconds,
          max: cfg.maxBaseBackupAgeHours,
          expected: b.baseExpected,
        },
      ]),
    // "None yet" is the dead-man switch's to report (the backup schedule has not succeeded).
    when: (k) => k.expected && k.age !== null && k.age > k.max * 3600,
    severity: 'critical',
    key: (k) => `backup-age:${k.b.target}:${k.kind}`,
    labels: (k) => ({ target: k.b.target, kind: k.kind }),
    target: (k) => k.b.target,
    message: ([k]) =>
      `the newest verified ${k.kind === 'dump' ? 'dump' : 'base backup'} of ${k.b.target} is ` +
      `${minutes(k.age!)} old (limit ${k.max} h)`,
    undecided: backupsNotRead,
  }),
  defineRule<BackupHealth>({
    rule: 'archive-lag',
    over: (s) => s.backups,
    when: (b, _s, cfg) => b.archive?.lagSeconds != null && b.archive.lagSeconds > cfg.maxArchiveLagSeconds,
    severity: 'critical',
    key: (b) => `archive-lag:${b.target}`,
    labels: (b) => ({ target: b.target }),
    target: (b) => b.target,
    message: ([b], _s, cfg) =>
      `WAL archive of ${b.target} lags ${b.archive!.lagSeconds} s (${b.archive!.lagSegments ?? '?'} ` +
      `segments) at ${iso(b.archive!.checkedAt)}; limit ${cfg.maxArchiveLagSeconds} s`,
    undecided: backupsNotRead,
  }),
  defineRule<PartitionHealth>({
    rule: 'partition-runway',
    over: (s) => s.partitions,
    when: (p, _s, cfg) => p.runwaySeconds !== null && p.runwaySeconds < cfg.minPartitionRunwayDays * 86_400,
    severity: (p) => (p.runwaySeconds === 0 ? 'critical' : 'warning'),
    key: (p) => `partition-runway:${p.target}:${p.table}`,
    labels: (p) => ({ target: p.target, table: p.table }),
    target: (p) => p.target,
    message: ([p], _s, cfg) =>
      p.runwaySeconds === 0
        ? `${p.table} on ${p.target} has no partition for now: new rows go to DEFAULT (or fail)`
        : `${p.table} on ${p.target} has partitions for only ${minutes(p.runwaySeconds!)} ahead (limit ` +
          `${cfg.minPartitionRunwayDays} days)`,
    undecided: tableNotRead,
  }),
  defineRule<PartitionHealth>({
    rule: 'default-rows',
    over: (s) => s.partitions,
    when: (p) => Boolean(p.defaultRows),
    severity: 'warning',
    key: (p) => `default-rows:${p.target}:${p.table}`,
    labels: (p) => ({ target: p.target, table: p.table }),
    target: (p) => p.target,
    message: ([p]) =>
      `${p.defaultRows}${p.defaultRows! >= 100_000 ? '+' : ''} rows of ${p.table} on ${p.target} sit in ` +
      `its DEFAULT partition`,
    undecided: tableNotRead,
  }),
  defineRule<PartitionHealth>({
    rule: 'retention-orphan',
    over: (s) => s.partitions,
    when: (p) => Boolean(p.unfinishedDetaches),
    severity: 'critical',
    key: (p) => `retention-orphan:${p.target}:${p.table}`,
    labels: (p) => ({ target: p.target, table: p.table }),
    target: (p) => p.target,
    message: ([p]) =>
      `${p.unfinishedDetaches} partition(s) of ${p.table} on ${p.target} were taken out by a retention ` +
      `run that did not finish (${(p.unfinishedPartitions ?? []).join(', ')}); ` +
      (p.policy
        ? 'the next drop-expired-partitions run finishes them'
        : `no partition policy names ${p.table} any more, so no run will: restore its policy to let ` +
          'drop-expired-partitions finish them, or re-attach or drop them by hand (the retention journal ' +
          'keeps their bounds)'),
    // Stranded partitions come from the target's retention journal; runway and DEFAULT rows from the policy's row.
    undecided: (labels, s) => `journal:${labels.target}` in s.errors || tableNotRead(labels, s),
  }),
  defineRule<TargetHealth>({
    rule: 'target-unreachable',
    over: (s) => s.targets,
    when: (t) => !t.reachable,
    severity: 'critical',
    // By cluster and code: a server that is down, or full, is one alert listing its databases.
    key: (t) => `target-unreachable:${t.cluster}:${t.code ?? 'UNREACHABLE'}`,
    labels: (t) => ({ cluster: t.cluster, code: t.code ?? 'UNREACHABLE' }),
    target: (t) => t.target,
    message: unreachableMessage,
    undecided: () => false,
  }),
  defineRule<PartitionHealth>({
    rule: 'health-read',
    over: (s) => s.partitions,
    // A target that cannot be reached is its own alert; its tables say no more.
    when: (p, s) => p.error !== undefined && !unreachable(s, p.target),
    severity: 'warning',
    key: (p) => `health-read:partitions:${p.target}:${p.table}`,
    labels: (p) => ({ target: p.target, table: p.table }),
    target: (p) => p.target,
    message: ([p]) => `cannot read the partitions of ${p.table} on ${p.target}: ${p.error}`,
    undecided: (labels, s) => unreachable(s, labels.target),
  }),
  // Held back by the load governor longer than its window: deferred (the next run goes on from
  // there), or still held; resolved by a run that completes undeferred.
  defineRule<HeldFinding>({
    rule: 'governor-held',
    over: (s) => governorHeld(s),
    when: () => true,
    severity: 'warning',
    key: (f) => `governor-held:${f.job}:${f.target}`,
    labels: (f) => ({ job: f.job, target: f.target }),
    target: (f) => f.target,
    // A run held now says more than an earlier one's deferral.
    message: (fs) => (fs.find((f) => f.live) ?? fs[0]).summary,
    undecided: notRead('governor'),
  }),
  defineRule<[string, string]>({
    rule: 'health-read',
    over: (s) => Object.entries(s.errors),
    when: () => true,
    severity: 'critical',
    key: ([part]) => `health-read:${part}`,
    labels: ([part]) => ({ part }),
    message: ([[part, message]]) => `the monitor cannot read ${part}: ${message}`,
    forMs: (cfg) => cfg.noWorkerForMs,
    undecided: () => false,
  }),
];

const SEVERITY_ORDER: Record<Severity, number> = { critical: 0, warning: 1 };

/** The conditions that hold in this snapshot, findings of one key merged. Pure: the tests feed it snapshots. */
export function judge(s: HealthSnapshot, cfg: AlertConfig): Alert[] {
  const out: Alert[] = [];
  for (const r of RULES) {
    if ((cfg.disabled as readonly string[]).includes(r.rule)) continue;
    const byKey = new Map<string, [unknown, ...unknown[]]>();
    for (const x of r.over(s, cfg)) {
      if (!r.when(x, s, cfg)) continue;
      const key = r.key(x);
      const group = byKey.get(key);
      if (group) group.push(x);
      else byKey.set(key, [x]);
    }
    for (const [key, xs] of byKey) {
      const severities = xs.map((x) => (typeof r.severity === 'function' ? r.severity(x) : r.severity));
      const targets = r.target ? [...new Set(xs.map(r.target))].sort() : undefined;
      out.push({
        key,
        rule: r.rule,
        severity: severities.sort((a, b) => SEVERITY_ORDER[a] - SEVERITY_ORDER[b])[0]!,
        summary: r.message(xs, s, cfg),
        labels: r.labels(xs[0]),
        ...(targets ? { targets } : {}),
        ...(r.forMs ? { forMs: r.forMs(cfg) } : {}),
      });
    }
  }
  return out;
}

/** An incident of this rule whose evidence could not be read in this snapshot: neither fired nor resolved. */
export function undecided(incident: Pick<Alert, 'rule' | 'labels'>, s: HealthSnapshot): boolean {
  return RULES.filter((r) => r.rule === incident.rule).some((r) => r.undecided(incident.labels, s));
}
