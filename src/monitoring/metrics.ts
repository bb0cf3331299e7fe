// GET /metrics: the health snapshot in Prometheus text format (prom-client). All
// series but the process's own describe the fleet, not this process, so any one server
// can be scraped. The fleet's series are rendered once per snapshot (at 1,000 targets
// that is megabytes of text and most of a second), by the server as soon as its sampler
// has one; a scrape adds the process's series and the snapshot's age.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { HealthSnapshot } from './health.ts';

const seconds = (msValue: number | null | undefined) => (msValue == null ? undefined : msValue / 1000);

export class Metrics {
  /** The fleet's series, filled from one snapshot. */
  readonly registry = new Registry();
  /** The answering process's series and the snapshot's age: new on every scrape. */
  private readonly own = new Registry();
  private readonly g: Record<string, Gauge<string>>;
  private readonly runs: Counter<string>;
  private readonly snapshotAge: Gauge<string>;
  private readonly throttled: Counter<string>;
  private snapshot?: HealthSnapshot;
  private rendered?: { snapshot: HealthSnapshot; body: Promise<string> };

  /** `health`: the server's sampler, or anything that reads a snapshot (a HealthReader takes one per scrape). */
  constructor(private readonly health: { read(): Promise<HealthSnapshot> }) {
    const r = this.registry;
    // pgmaint_process_*, pgmaint_nodejs_*: the server process itself.
    collectDefaultMetrics({ register: this.own, prefix: 'pgmaint_' });
    this.snapshotAge = new Gauge({
      name: 'pgmaint_health_snapshot_age_seconds',
      help: 'Age of the health snapshot the other fleet series come from (the server samples every 30 s)',
      registers: [this.own],
    });
    const gauge = (name: string, help: string, labelNames: string[]) =>
      new Gauge({ name, help, labelNames, registers: [r] });
    this.runs = new Counter({
      name: 'pgmaint_job_runs_total',
      help:
        'Finished attempts by outcome (succeeded, failed, retrying, timed_out, skipped), and runs recovered ' +
        'from a lost worker (outcome="recovered")',
      labelNames: ['job', 'target', 'outcome'],
      registers: [r],
    });
    this.throttled = new Counter({
      name: 'pgmaint_governor_throttled_seconds_total',
      help:
        'Seconds governed runs waited, by reason (replica_lag, active, lock_waits, probe, custom; paused: held by ' +
        'hand)',
      labelNames: ['job', 'target', 'reason'],
      registers: [r],
    });
    // The duration histogram's buckets come from Redis already counted; prom-client's
    // Histogram only counts observations of its own, so it is rendered as a custom metric.
    r.registerMetric({
      name: 'pgmaint_job_duration_seconds',
      help: 'Run time of finished attempts',
      type: 'histogram',
      get: async () => ({
        name: 'pgmaint_job_duration_seconds',
        help: 'Run time of finished attempts',
        type: 'histogram',
        aggregator: 'sum',
        values: (this.snapshot?.durations ?? []).flatMap((d) => [
          ...d.buckets.map((b) => ({
            metricName: 'pgmaint_job_duration_seconds_bucket',
            labels: { job: d.job, target: d.target, le: b.le },
            value: b.count,
          })),
          {
            metricName: 'pgmaint_job_duration_seconds_bucket',
            labels: { job: d.job, target: d.target, le: '+Inf' },
            value: d.count,
          },
          { metricName: 'pgmaint_job_duration_seconds_sum', labels: { job: d.job, target: d.target }, value: d.sum },
          {
            metricName: 'pgmaint_job_duration_seconds_count',
            labels: { job: d.job, target: d.target },
            value: d.count,
          },
        ]),
      }),
    } as never);
    this.g = {
      lastSuccess: gauge('pgmaint_job_last_success_timestamp_seconds', 'When the job last succeeded on the target', [
        'job',
        'target',
      ]),
      consecutiveFailures: gauge(
        'pgmaint_job_consecutive_failures',
        'Runs in a row that failed after their last attempt',
        ['job', 'target'],
      ),
      scheduleNext: gauge('pgmaint_schedule_next_run_timestamp_seconds', 'Next run of the schedule as Redis holds it', [
        'schedule',
        'job',
        'target',
      ]),
      scheduleMissing: gauge('pgmaint_schedule_missing', '1 when the schedule has no scheduler in Redis', [
        'schedule',
        'job',
        'target',
      ]),
      scheduleLag: gauge('pgmaint_schedule_start_lag_seconds', 'Start of the latest run minus its scheduled time', [
        'schedule',
        'job',
        'target',
      ]),
      scheduleLastSuccess: gauge(
        'pgmaint_schedule_last_success_timestamp_seconds',
        'Last success of a run started by the schedule',
        ['schedule', 'job', 'target'],
      ),
      scheduleDue: gauge(
        'pgmaint_schedule_success_due_timestamp_seconds',
        'A success is overdue after this (dead-man switch, before grace)',
        ['schedule', 'job', 'target'],
      ),
      queueJobs: gauge('pgmaint_queue_jobs', 'Jobs in the queue by state', ['queue', 'state']),
      queueWorkers: gauge('pgmaint_queue_workers', 'Worker connections serving the queue', ['queue']),
      queueOldestActive: gauge(
        'pgmaint_queue_oldest_active_seconds',
        'How long the longest-running active job has run',
        ['queue'],
      ),
      targetUp: gauge(
        'pgmaint_target_up',
        '1 when the target answered in this reading, 0 when it could not be reached',
        ['target', 'cluster'],
      ),
      dumpAge: gauge('pgmaint_backup_newest_age_seconds', 'Age of the newest verified backup', ['target', 'kind']),
      window: gauge(
        'pgmaint_recovery_window_seconds',
        'Point-in-time recovery window (earliest restorable to newest archived WAL)',
        ['target'],
      ),
      archiveLag: gauge('pgmaint_wal_archive_lag_seconds', 'WAL archive lag at the last archive-check', ['target']),
      archiveLagSegments: gauge(
        'pgmaint_wal_archive_lag_segments',
        'WAL segments not yet archived at the last archive-check',
        ['target'],
      ),
      archiveChecked: gauge('pgmaint_wal_archive_check_timestamp_seconds', 'When archive-check last finished', [
        'target',
      ]),
      archiveOk: gauge('pgmaint_wal_archive_healthy', '1 when the last archive-check succeeded', ['target']),
      drillRto: gauge('pgmaint_pitr_drill_rto_seconds', 'Restore + replay time of the last PITR drill', ['target']),
      drillRpo: gauge('pgmaint_pitr_drill_rpo_seconds', 'Data-loss window measured by the last PITR drill', ['target']),
      drillAt: gauge('pgmaint_pitr_drill_timestamp_seconds', 'When the last PITR drill finished', ['target']),
      drillOk: gauge('pgmaint_pitr_drill_success', '1 when the last PITR drill succeeded', ['target']),
      runway: gauge('pgmaint_partition_runway_seconds', 'Time until rows have no partition but DEFAULT', [
        'target',
        'table',
      ]),
      defaultRows: gauge('pgmaint_partition_default_rows', 'Rows in the DEFAULT partition (counted up to 100000)', [
        'target',
        'table',
      ]),
      unfinishedDetaches: gauge(
        'pgmaint_partition_unfinished_detaches',
        'Partitions a retention run took out of the parent and did not finish (archive, drop or re-attach)',
        ['target', 'table'],
      ),
      indexFindings: gauge(
        'pgmaint_index_report_findings',
        'Findings of the last index-report: unused, overlapping (duplicate or prefix) indexes, foreign keys ' +
          'without an index',
        ['target', 'kind'],
      ),
      indexBytes: gauge('pgmaint_index_report_bytes', 'Size of the unused and of the overlapping indexes found', [
        'target',
        'kind',
      ]),
      indexReportAt: gauge('pgmaint_index_report_timestamp_seconds', 'When the last index-report finished', ['target']),
      indexLeftovers: gauge(
        'pgmaint_index_leftovers',
        'Invalid _ccnew/_ccold indexes a REINDEX CONCURRENTLY left (the next index-maintenance run drops them)',
        ['target'],
      ),
      queryTime: gauge(
        'pgmaint_query_top_exec_seconds',
        'Execution time of the top statements between the last two query-stats snapshots',
        ['target', 'queryid'],
      ),
      queryCalls: gauge('pgmaint_query_top_calls', 'Calls of the top statements between the last two snapshots', [
        'target',
        'queryid',
      ]),
      scrapeErrors: gauge('pgmaint_health_read_errors', '1 for a part of the health reading that failed', ['part']),
      governorState: gauge(
        'pgmaint_governor_state',
        'Governed runs held now: throttled (by load) or paused (by hand, started or waiting to start)',
        ['job', 'target', 'state'],
      ),
      governorHold: gauge(
        'pgmaint_governor_hold_until_timestamp_seconds',
        'When a hold by hand ends: scope all (the maintenance pause), queue:<job> or job:<job>/<id>',
        ['scope'],
      ),
      governorDeferred: gauge(
        'pgmaint_governor_deferred_timestamp_seconds',
        'When the last run of the job on the target stopped deferred by load (until a run completes undeferred)',
        ['job', 'target'],
      ),
    };
  }

  private fill(s: HealthSnapshot): void {
    this.snapshot = s;
    for (const m of [...Object.values(this.g), this.runs, this.throttled]) m.reset();
    for (const r of s.runs) this.runs.inc({ job: r.job, target: r.target, outcome: r.outcome }, r.count);
    for (const t of s.governor.throttled)
      this.throttled.inc({ job: t.job, target: t.target, reason: t.reason }, t.seconds);
    const set = (g: Gauge<string>, labels: Record<string, string>, v: number | null | undefined) => {
      if (v !== null && v !== undefined) g.set(labels, v);
    };
    for (const j of s.jobs) {
      const l = { job: j.job, target: j.target };
      set(this.g.lastSuccess!, l, seconds(j.lastSuccess?.getTime()));
      set(this.g.consecutiveFailures!, l, j.consecutiveFailures);
    }
    for (const sc of s.schedules) {
      const l = { schedule: sc.id, job: sc.job, target: sc.target };
      set(this.g.scheduleNext!, l, seconds(sc.nextRun));
      set(this.g.scheduleMissing!, l, sc.nextRun === null ? 1 : 0);
      set(this.g.scheduleLag!, l, sc.startLagSeconds);
      set(this.g.scheduleLastSuccess!, l, seconds(sc.lastSuccess));
      set(this.g.scheduleDue!, l, seconds(sc.dueBy));
    }
    for (const q of s.queues) {
      for (const [state, n] of Object.entries(q.counts)) set(this.g.queueJobs!, { queue: q.queue, state }, n);
      set(this.g.queueWorkers!, { queue: q.queue }, q.workers);
      const oldest = Math.min(...q.active.map((a) => a.startedAt));
      set(this.g.queueOldestActive!, { queue: q.queue }, q.active.length ? (s.at - oldest) / 1000 : 0);
    }
    for (const t of s.targets) set(this.g.targetUp!, { target: t.target, cluster: t.cluster }, t.reachable ? 1 : 0);
    for (const b of s.backups) {
      const t = { target: b.target };
      set(this.g.dumpAge!, { ...t, kind: 'dump' }, b.newestDumpAgeSeconds);
      set(this.g.dumpAge!, { ...t, kind: 'base' }, b.newestBaseBackupAgeSeconds);
      set(this.g.window!, t, b.recoveryWindowSeconds);
      if (b.archive) {
        set(this.g.archiveLag!, t, b.archive.lagSeconds);
        set(this.g.archiveLagSegments!, t, b.archive.lagSegments);
        set(this.g.archiveChecked!, t, seconds(b.archive.checkedAt));
        set(this.g.archiveOk!, t, b.archive.ok ? 1 : 0);
      }
      if (b.drill) {
        set(this.g.drillRto!, t, b.drill.rtoSeconds);
        set(this.g.drillRpo!, t, b.drill.rpoSeconds);
        set(this.g.drillAt!, t, seconds(b.drill.finishedAt));
        set(this.g.drillOk!, t, b.drill.ok ? 1 : 0);
      }
    }
    for (const p of s.partitions) {
      const l = { target: p.target, table: p.table };
      set(this.g.runway!, l, p.runwaySeconds);
      set(this.g.defaultRows!, l, p.defaultRows);
      set(this.g.unfinishedDetaches!, l, p.unfinishedDetaches);
      if (p.error) set(this.g.scrapeErrors!, { part: `partitions:${p.target}:${p.table}` }, 1);
    }
    for (const x of s.indexes) {
      const t = { target: x.target };
      set(this.g.indexFindings!, { ...t, kind: 'unused' }, x.unused);
      set(this.g.indexFindings!, { ...t, kind: 'overlapping' }, x.overlapping);
      set(this.g.indexFindings!, { ...t, kind: 'unindexed_foreign_key' }, x.unindexedForeignKeys);
      set(this.g.indexBytes!, { ...t, kind: 'unused' }, x.unusedBytes);
      set(this.g.indexBytes!, { ...t, kind: 'overlapping' }, x.overlappingBytes);
      set(this.g.indexReportAt!, t, seconds(x.finishedAt));
    }
    for (const x of s.indexLeftovers) {
      if (x.error) set(this.g.scrapeErrors!, { part: `index-leftovers:${x.target}` }, 1);
      else set(this.g.indexLeftovers!, { target: x.target }, x.indexes.length);
    }
    for (const q of s.queries) {
      for (const t of q.top) {
        set(this.g.queryTime!, { target: q.target, queryid: t.queryid }, t.totalExecMs / 1000);
        set(this.g.queryCalls!, { target: q.target, queryid: t.queryid }, t.calls);
      }
    }
    for (const h of s.governor.held) this.g.governorState!.inc({ job: h.job, target: h.target, state: h.state });
    for (const h of s.governor.holds) {
      const scope =
        h.scope.kind === 'all'
          ? 'all'
          : h.scope.kind === 'queue'
            ? `queue:${h.scope.queue}`
            : `job:${h.scope.queue}/${h.scope.id}`;
      set(this.g.governorHold!, { scope }, h.until / 1000);
    }
    for (const d of s.governor.deferred) set(this.g.governorDeferred!, { job: d.job, target: d.target }, d.at / 1000);
    for (const part of Object.keys(s.errors)) set(this.g.scrapeErrors!, { part }, 1);
  }

  /** Renders the fleet's series of this snapshot once (scrapes meanwhile share it); one snapshot at a time. */
  prepare(s: HealthSnapshot): Promise<string> {
    if (this.rendered?.snapshot === s) return this.rendered.body;
    const previous = this.rendered?.body.catch(() => '') ?? Promise.resolve('');
    const body = previous.then(() => {
      this.fill(s);
      return this.registry.metrics();
    });
    this.rendered = { snapshot: s, body };
    return body;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    const s = await this.health.read();
    const fleet = await this.prepare(s);
    this.snapshotAge.set(Math.max(0, (Date.now() - s.at) / 1000));
    return { contentType: this.registry.contentType, body: (await this.own.metrics()) + fleet };
  }
}
