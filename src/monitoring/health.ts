// One reading of everything an operator alerts on, from shared state only (run
// history in PostgreSQL, counters and queues in Redis, the backup catalog, the
// target's own catalog), so any process can take it: /metrics renders it, the
// alert monitor judges it. The server's sampler (sampler.ts) takes one every 30 s and
// serves that; a reading of one target is bounded, so a slow target delays none.
import type { ArchiveCheckResult } from '../../jobs/archive-check.ts';
import type { IndexReportResult } from '../../jobs/index-report.ts';
import type { PitrDrillResult } from '../../jobs/pitr-drill.ts';
import type { QueryStatsSnapshotResult } from '../../jobs/query-stats-snapshot.ts';
import { readBackupCatalog } from '../backup/target-catalog.ts';
import { readTargetLeftovers, type IndexLeftoverHealth } from './index-leftovers.ts';
import { ANSWER_DEADLINE_MS, withObjectStore } from '../backup/object-store.ts';
import { nextSpreadRun } from '../core/cron.ts';
import { backupDirOf } from '../core/config.ts';
import type { JobStatus } from '../runner/history.ts';
import { ServiceUnavailableError } from '../core/errors.ts';
import { postgresFailureMessage } from '../runner/postgres-failure.ts';
import { redisFailureMessage, redisLabel, settleWithin } from '../runner/redis-failure.ts';
import type { Runtime } from '../runner/runtime.ts';
import {
  fleetPartitions,
  type PartitionHealth,
  readTargetPartitions,
  unreachablePartitions,
} from './partition-health.ts';
import { TARGET_READ_DEADLINE_MS, withinTargetDeadline } from './target-deadline.ts';
import { readTargets, type TargetHealth, unreachableTargets } from './target-health.ts';
import { readRunStats, type DurationStats, type RunCount } from '../runner/run-stats.ts';
import { type GovernorHealth, readGovernor } from '../governor/board.ts';
import { Controls, heldWithin, type Hold } from '../governor/controls.ts';

export { DEFAULT_ROWS_CAP, type PartitionHealth } from './partition-health.ts';
export type { TargetHealth } from './target-health.ts';

export const QUEUE_STATES = [
  'waiting',
  'active',
  'delayed',
  'prioritized',
  'waiting-children',
  'failed',
  'completed',
] as const;

export interface ScheduleHealth {
  id: string;
  job: string;
  target: string;
  /** Next run as BullMQ holds it (ms), or null when the scheduler is missing from Redis. */
  nextRun: number | null;
  lastSuccess: number | null;
  startLagSeconds: number | null;
  /** When a success is due at the latest: the run after the last success, plus its maximum run time. */
  dueBy: number | null;
}

export interface QueueHealth {
  queue: string;
  counts: Record<(typeof QUEUE_STATES)[number], number>;
  workers: number;
  /** Has a schedule or waiting work: a queue nobody serves then matters. */
  needsWorker: boolean;
  /** Active jobs with when they started, for the overrun check. */
  active: { id: string; startedAt: number; maxRunMs: number }[];
}

export interface BackupHealth {
  target: string;
  /** Whether backups of this kind are expected here (a schedule, or one exists). */
  dumpsExpected: boolean;
  baseExpected: boolean;
  newestDumpAgeSeconds: number | null;
  newestBaseBackupAgeSeconds: number | null;
  recoveryWindowSeconds: number | null;
  archive: { lagSeconds: number | null; lagSegments: number | null; checkedAt: number; ok: boolean } | null;
  drill: { rtoSeconds: number | null; rpoSeconds: number | null; finishedAt: number; ok: boolean } | null;
}

/** The last index-report's findings on a target (it reads only; nothing here is acted on). */
export interface IndexHealth {
  target: string;
  finishedAt: number;
  unused: number;
  unusedBytes: number;
  overlapping: number;
  overlappingBytes: number;
  unindexedForeignKeys: number;
}

/** The top statements of the last query-stats-snapshot on a target. */
export interface QueryHealth {
  target: string;
  finishedAt: number;
  top: { queryid: string; calls: number; totalExecMs: number; meanExecMs: number }[];
}

export interface HealthSnapshot {
  at: number;
  runs: RunCount[];
  durations: DurationStats[];
  jobs: JobStatus[];
  schedules: ScheduleHealth[];
  queues: QueueHealth[];
  /** Every configured target, reachable or not: one target down leaves the others' readings whole. */
  targets: TargetHealth[];
  backups: BackupHealth[];
  partitions: PartitionHealth[];
  indexes: IndexHealth[];
  /** Invalid leftovers of REINDEX CONCURRENTLY, per target index-maintenance has run on. */
  indexLeftovers: IndexLeftoverHealth[];
  queries: QueryHealth[];
  /** The load governor: holds by hand, held runs, deferrals, seconds held (docs/governor.md). */
  governor: GovernorHealth;
  /** Parts that could not be read, by name (one target's backups: `backups:<target>`): a reading is partial
   * rather than absent. */
  errors: Record<string, string>;
}

/** The Redis reads of one reading give up together after this: /metrics answers even when Redis does not. */
export const HEALTH_REDIS_DEADLINE_MS = 3000;

const ms = (d: Date | string | null | undefined) => (d ? new Date(d).getTime() : null);

/** A Redis read held to the reading's deadline. */
type RedisRead = <T>(p: Promise<T>) => Promise<T>;

/** Takes readings; uncached (the server serves its sampler's snapshot: sampler.ts). */
export class HealthReader {
  private readonly targetDeadlineMs: number;

  /** targetDeadlineMs: what each target's part of a reading may take (TARGET_READ_DEADLINE_MS). */
  constructor(
    private readonly rt: Runtime,
    opts: { targetDeadlineMs?: number } = {},
  ) {
    this.targetDeadlineMs = opts.targetDeadlineMs ?? TARGET_READ_DEADLINE_MS;
  }

  /** A reading now: what /metrics and the status report read when no sampler keeps a snapshot. */
  read(): Promise<HealthSnapshot> {
    return this.take();
  }

  /** Ids of retention runs a worker holds now (active, or waiting for a retry after a lost worker). */
  private async runningRetention(): Promise<Set<string>> {
    if (!this.rt.registry.get('drop-expired-partitions')) return new Set();
    const jobs = await this.rt.queues
      .get('drop-expired-partitions')
      .getJobs(['active'], 0, 100)
      .catch(() => []);
    return new Set(jobs.map((j) => j.id!));
  }

  /** An error as a reading reports it; one about reaching Redis names Redis. */
  describeError(err: unknown): string {
    return redisFailureMessage(this.rt.config, err) ?? (err as Error).message;
  }

  /** A run-history read's error; one about reaching its database names PostgreSQL and the variable. */
  private describeHistoryError(err: unknown): string {
    const { config } = this.rt;
    const history = config.targets.get(config.history.target);
    return (history && postgresFailureMessage(history, err)) ?? this.describeError(err);
  }

  /** A reading; its sessions on the targets end with it (Connections.releaseIdle). */
  take(now = Date.now()): Promise<HealthSnapshot> {
    return this.readAll(now).finally(() => this.rt.connections.releaseIdle('monitor'));
  }

  private async readAll(now: number): Promise<HealthSnapshot> {
    const { rt } = this;
    const errors: Record<string, string> = {};
    const part = <T>(name: string, p: Promise<T>, fallback: T): Promise<T> =>
      p.catch((err) => {
        errors[name] = name === 'history' ? this.describeHistoryError(err) : this.describeError(err);
        return fallback;
      });
    // Every Redis read starts at once and has the same deadline, so a Redis that does not
    // answer costs the reading HEALTH_REDIS_DEADLINE_MS once, not once per read.
    const giveUpAt = Date.now() + HEALTH_REDIS_DEADLINE_MS;
    const redis: RedisRead = (p) =>
      settleWithin(
        p,
        giveUpAt - Date.now(),
        () =>
          new ServiceUnavailableError(
            `${redisLabel(rt.config)} did not answer within ${HEALTH_REDIS_DEADLINE_MS / 1000} s`,
          ),
      );
    const prefix = rt.config.redis.prefix;
    const scheduleRows = part('history', rt.history.scheduleStatus(), []);
    // Holds by hand of the last days: a run they held is not overdue for the time they held it.
    const holdLog = redis(new Controls(rt.queues.connection, prefix).log()).catch((): Hold[] => []);
    const jobsRead = part('history', rt.history.jobStatus(), []);
    const running = redis(this.runningRetention()).catch(() => new Set<string>());
    const indexTargets = jobsRead.then(
      (js) => new Set(js.filter((j) => j.job === 'index-maintenance').map((j) => j.target)),
    );
    // Target by target, each on one session: reached first, then its partitions, journal and index leftovers.
    const partitionsOf = new Map<string, PartitionHealth[]>();
    const leftovers = new Map<string, IndexLeftoverHealth>();
    const targetsRead = readTargets(rt, this.targetDeadlineMs, async (target) => {
      const describe = (err: unknown) => this.describeError(err);
      const deadline = this.targetDeadlineMs;
      partitionsOf.set(target, await readTargetPartitions(rt, target, now, await running, errors, describe, deadline));
      if ((await indexTargets).has(target)) leftovers.set(target, await readTargetLeftovers(rt, target, deadline));
    });
    const [stats, jobs, schedules, indexes, queries, queues, targets, governor] = await Promise.all([
      part('redis', redis(readRunStats(rt.queues.connection, prefix)), { runs: [], durations: [] }),
      jobsRead,
      part('schedules', this.schedules(scheduleRows, now, redis, holdLog), []),
      part('history', this.indexes(), []),
      part('history', this.queries(), []),
      part('queues', redis(this.queues()), []),
      targetsRead,
      part('governor', redis(readGovernor(rt.queues.connection, prefix, now)), {
        holds: [],
        held: [],
        deferred: [],
        throttled: [],
      }),
    ]);
    for (const [target, why] of unreachableTargets(targets))
      partitionsOf.set(target, unreachablePartitions(rt, target, why));
    const partitions = fleetPartitions(rt, partitionsOf);
    const indexLeftovers = [...rt.config.targets.keys()].flatMap((t) => leftovers.get(t) ?? []);
    // Per target: one target's catalog that cannot be read leaves the others' standing.
    const backups = (
      await Promise.all(
        [...rt.config.targets.keys()].map((t) =>
          part<BackupHealth | undefined>(
            `backups:${t}`,
            withinTargetDeadline(this.backups(t, now), t, this.targetDeadlineMs),
            undefined,
          ),
        ),
      )
    ).filter((b) => b !== undefined);
    const snapshot = {
      at: now,
      ...stats,
      jobs,
      schedules,
      queues,
      targets,
      backups,
      partitions,
      indexes,
      queries,
      governor,
    };
    return { ...snapshot, indexLeftovers, errors };
  }

  private async queues(): Promise<QueueHealth[]> {
    const scheduled = new Set(this.rt.schedules.map((s) => s.job));
    return Promise.all(
      this.rt.queues.all().map(async (q) => {
        const registered = this.rt.registry.get(q.name)!;
        const [counts, workers, active] = await Promise.all([
          q.getJobCounts(...QUEUE_STATES),
          q.getWorkersCount(),
          q.getActive(0, 99),
        ]);
        return {
          queue: q.name,
          counts: counts as QueueHealth['counts'],
          workers,
          needsWorker: scheduled.has(q.name) || (counts.waiting ?? 0) + (counts.prioritized ?? 0) > 0,
          active: active.map((j) => ({
            id: j.id!,
            startedAt: j.processedOn ?? j.timestamp,
            maxRunMs: registered.run.timeoutMs,
          })),
        };
      }),
    );
  }

  private async schedules(
    rowsRead: Promise<{ schedule: string; lastSuccess: Date | null; startLagSeconds: number | null }[]>,
    now: number,
    redis: RedisRead,
    holdLog: Promise<Hold[]>,
  ): Promise<ScheduleHealth[]> {
    const [rows, schedulers, holds] = await Promise.all([
      rowsRead,
      redis(Promise.all(this.rt.schedules.map((s) => this.rt.queues.get(s.job).getJobScheduler(s.id)))),
      holdLog,
    ]);
    const byId = new Map(rows.map((r) => [r.schedule, r]));
    const connection = this.rt.queues.connection;
    const seenKey = `${this.rt.config.redis.prefix}:monitor:schedule-first-seen`;
    return Promise.all(
      this.rt.schedules.map(async (s, i) => {
        const scheduler = schedulers[i];
        const row = byId.get(s.id);
        const lastSuccess = ms(row?.lastSuccess);
        // Never succeeded: count from when a monitor first saw the schedule, not from 1970.
        let since = lastSuccess;
        if (since === null) {
          await redis(connection.hsetnx(seenKey, s.id, String(now)));
          since = Number(await redis(connection.hget(seenKey, s.id)));
        }
        const due = nextSpreadRun(s.cron, s.tz, since, s.offsetMs);
        const dueBy = due + this.rt.registry.get(s.job)!.run.timeoutMs + heldWithin(holds, s.job, due, now);
        return {
          id: s.id,
          job: s.job,
          target: s.payload.target,
          nextRun: scheduler?.next ?? null,
          lastSuccess,
          startLagSeconds: row?.startLagSeconds ?? null,
          dueBy,
        };
      }),
    );
  }

  /** Per target, what the last succeeded-or-failed run of `job` returned, when it succeeded. */
  private async lastResults<R, T>(job: string, read: (target: string, result: R, finishedAt: number) => T) {
    if (!this.rt.registry.get(job)) return [];
    const runs = await Promise.all(
      [...this.rt.config.targets.keys()].map(async (target) => ({
        target,
        run: await this.rt.history.lastFinished<R>(job, target),
      })),
    );
    return runs.flatMap(({ target, run }) =>
      run?.outcome === 'succeeded' && run.result ? [read(target, run.result, ms(run.finished_at)!)] : [],
    );
  }

  private indexes(): Promise<IndexHealth[]> {
    return this.lastResults<IndexReportResult, IndexHealth>('index-report', (target, r, finishedAt) => ({
      target,
      finishedAt,
      unused: r.unused.length,
      unusedBytes: r.unusedBytes,
      overlapping: r.overlapping.length,
      overlappingBytes: r.overlapping.reduce((n, o) => n + o.bytes, 0),
      unindexedForeignKeys: r.unindexedForeignKeys.length,
    }));
  }

  private queries(): Promise<QueryHealth[]> {
    return this.lastResults<QueryStatsSnapshotResult, QueryHealth>('query-stats-snapshot', (target, r, finishedAt) => ({
      target,
      finishedAt,
      top: r.top,
    }));
  }

  private async backups(target: string, now: number): Promise<BackupHealth> {
    const { rt } = this;
    const t = rt.config.targets.get(target)!;
    const [catalog, archiveRun, drillRun] = await Promise.all([
      // /metrics, /api/status and the alerts wait for it: the bucket gets ANSWER_DEADLINE_MS, not the job deadlines.
      withObjectStore(
        rt.config,
        (store) => readBackupCatalog(backupDirOf(rt.config), t, now, store),
        ANSWER_DEADLINE_MS,
      ),
      rt.history.lastFinished<ArchiveCheckResult>('archive-check', target),
      rt.history.lastFinished<PitrDrillResult>('pitr-drill', target),
    ]);
    const { dumps, sets } = catalog;
    const scheduledHere = (job: string) => rt.schedules.some((s) => s.job === job && s.payload.target === target);
    const age = (iso: string | undefined) => (iso ? Math.round((now - Date.parse(iso)) / 1000) : null);
    let windowSeconds = catalog.windowMeasured && sets.length ? catalog.recoveryWindow.seconds : null;
    const archiveResult = archiveRun?.result;
    if (windowSeconds === null && archiveResult?.recoveryWindow) windowSeconds = archiveResult.recoveryWindow.seconds;
    const drillResult = drillRun?.result;
    return {
      target,
      dumpsExpected: dumps.length > 0 || scheduledHere('backup'),
      baseExpected: sets.length > 0 || scheduledHere('base-backup'),
      newestDumpAgeSeconds: age(dumps[0]?.manifest.finishedAt),
      newestBaseBackupAgeSeconds: age(catalog.newestBaseBackupAt),
      recoveryWindowSeconds: windowSeconds,
      archive: archiveRun
        ? {
            lagSeconds: archiveResult?.lagSeconds ?? null,
            lagSegments: archiveResult?.lagSegments ?? null,
            checkedAt: ms(archiveRun.finished_at)!,
            ok: archiveRun.outcome === 'succeeded',
          }
        : null,
      drill: drillRun
        ? {
            rtoSeconds: drillResult?.rtoSeconds ?? null,
            rpoSeconds: drillResult?.rpoSeconds ?? null,
            finishedAt: ms(drillRun.finished_at)!,
            ok: drillRun.outcome === 'succeeded',
          }
        : null,
    };
  }
}
