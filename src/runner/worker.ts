// The worker runtime: one BullMQ Worker per job kind served by this process. It
// wraps every handler with payload validation, the schedule overlap/catch-up rules,
// a maximum run time, error classification and the run-history row.
import os from 'node:os';
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Connections } from './connections.ts';
import {
  classifyError,
  coerceError,
  describeError,
  errorCode,
  GovernorDeferredError,
  JobAbortedError,
  JobTimeoutError,
  UsageError,
  PayloadError,
  withCode,
} from '../core/errors.ts';
import type { RunHistory, RunStart } from './history.ts';
import { type RunAbort, RunContext } from './run-context.ts';
import type { Logger } from '../core/logger.ts';
import { type JobData, Queues } from './queues.ts';
import type { Registry } from './registry.ts';
import { ProgressDone } from './progress-done.ts';
import { RunStatsRecorder } from './run-stats.ts';
import { repeatStrategy } from '../core/cron.ts';
import type { ResolvedSchedule } from './scheduler.ts';
import { type GovernorPort, isGoverned, type RunGovernorHandle } from './governor-port.ts';
import { ClusterPermits, RunPermit, runHoldings } from './cluster-permits.ts';
import { checkJobData, knownTarget } from './job-data.ts';

export interface WorkerRuntimeOptions {
  connections: Connections;
  registry: Registry;
  history: RunHistory;
  logger: Logger;
  schedules: readonly ResolvedSchedule[];
  /** Job kinds (= queue names) this process serves; all when omitted. */
  only?: string[];
  /** The load governor (src/governor); without it every run goes flat out. */
  governor?: GovernorPort;
}

/** A run held before it starts (a maintenance pause) asks again at least this often. */
const HOLD_RECHECK_MS = 30_000;

/** How long an aborted handler may take to clean up before the run is reported. */
const ABORT_CLEANUP_MS = 15_000;

// Releases a schedule's overlap lock only if this job still holds it.
const RELEASE_LOCK =
  `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 ` + `end`;

export class WorkerRuntime {
  readonly workerId = `${os.hostname()}:${process.pid}`;
  private readonly workers: Worker<JobData>[] = [];
  private readonly running = new Map<string, RunAbort>();
  private readonly schedules: Map<string, ResolvedSchedule>;
  private readonly redis;
  /** Queues on the worker's own (patient) connection: like BullMQ's workers, they wait for Redis. */
  private readonly queues: Queues;
  private readonly stats: RunStatsRecorder;
  private readonly progressDone: ProgressDone;
  /** Runs held before their start whose wait was logged once already. */
  private readonly holdLogged = new Set<string>();
  private readonly permits: ClusterPermits;
  private closing = false;

  constructor(private readonly opts: WorkerRuntimeOptions) {
    this.schedules = new Map(opts.schedules.map((s) => [s.id, s]));
    this.redis = opts.connections.redis('pgmaint-worker-locks');
    this.queues = new Queues(opts.connections.config, opts.registry, this.redis);
    this.progressDone = new ProgressDone(this.redis, (err) =>
      opts.logger.warn({ err }, 'final progress of finished runs not recorded'),
    );
    this.stats = new RunStatsRecorder(this.redis, opts.connections.config.redis.prefix, (err) =>
      opts.logger.warn({ err }, 'run statistics not recorded'),
    );
    const { worker, redis } = opts.connections.config;
    this.permits = new ClusterPermits(
      this.redis,
      redis.prefix,
      worker.heavyJobsPerCluster,
      worker.lockDurationMs,
      (c, h) =>
        opts.logger.warn({ cluster: c, holder: h }, 'heavy-job permit lost (lease ran out while the run went on)'),
    );
  }

  get queueNames(): string[] {
    return this.opts.only ?? this.opts.registry.names();
  }

  start(): void {
    const { config } = this.opts.connections;
    const connection = this.opts.connections.redis('pgmaint-worker');
    for (const name of this.queueNames) {
      const registered = this.opts.registry.get(name);
      if (!registered) throw new UsageError(`--queues: ${this.opts.registry.unknownJob(name)}`);
      const worker = new Worker<JobData>(name, (job, token) => this.process(job, token), {
        connection,
        prefix: config.redis.prefix,
        concurrency: registered.run.concurrency,
        lockDuration: config.worker.lockDurationMs,
        stalledInterval: config.worker.stalledIntervalMs,
        maxStalledCount: 2,
        settings: { repeatStrategy },
      });
      worker.on('error', (err) => this.opts.logger.error({ err, queue: name }, 'worker error'));
      this.workers.push(worker);
    }
    if (this.queueNames.some((q) => isGoverned(this.opts.registry.get(q)!.def)))
      this.opts.governor?.start([...config.targets.keys()]);
    this.opts.logger.info({ queues: this.queueNames, worker: this.workerId }, 'worker started');
  }

  /** Fleet-wide counters for /metrics; a Redis hiccup must not fail the run. */
  private stat(run: RunStart, outcome: string, startedAt?: number): void {
    const seconds = startedAt === undefined ? undefined : (Date.now() - startedAt) / 1000;
    this.stats.record({ job: run.job, target: run.target, outcome, seconds, recovered: run.recovered });
  }

  private lockKey(scheduleId: string): string {
    return `${this.opts.connections.config.redis.prefix}:schedule-running:${scheduleId}`;
  }

  /** Returns a reason to skip a scheduled run that no worker took in time (catchUp: none). */
  private missedRun(job: Job<JobData>, schedule: ResolvedSchedule, scheduledFor: number): string | undefined {
    const late = Date.now() - scheduledFor;
    const tolerance = this.opts.connections.config.scheduler.lateToleranceMs;
    // A stalled job re-run after a crash is the same run, not a missed one; so is a run that
    // was taken in time and went back to wait (a maintenance pause held it, or it waited for its
    // cluster's permit after it started).
    const firstTake = job.attemptsMade === 0 && !job.stalledCounter && job.attemptsStarted <= 1;
    if (schedule.catchUp === 'none' && late > tolerance && firstTake) {
      return `missed by ${Math.round(late / 1000)}s while no worker ran it (catchUp: none)`;
    }
    return undefined;
  }

  /** Returns a reason to skip this scheduled run while the previous one is active, or undefined to run it. */
  private async overlapGate(job: Job<JobData>, schedule: ResolvedSchedule, ttlMs: number): Promise<string | undefined> {
    if (schedule.overlap === 'allow') return undefined;
    const key = this.lockKey(schedule.id);
    if ((await this.redis.set(key, job.id!, 'PX', ttlMs, 'NX')) === 'OK') return undefined;
    const holder = await this.redis.get(key);
    if (holder === job.id) return undefined;
    const holderJob = holder ? await this.queues.get(job.name).getJob(holder) : undefined;
    if (holderJob && (await holderJob.getState()) === 'active')
      return `previous run ${holder} of schedule ${schedule.id} is still active`;
    // The holder is gone (finished without releasing, or lost): take over.
    await this.redis.set(key, job.id!, 'PX', ttlMs);
    return undefined;
  }

  private async process(job: Job<JobData>, token: string | undefined): Promise<unknown> {
    if (this.closing) {
      // BullMQ may hand out one more job while its blocking fetch ends; put it back
      // untouched (no attempt used) for another worker.
      await job.moveToDelayed(Date.now(), token);
      throw new DelayedError();
    }
    const { registry, history, connections } = this.opts;
    const registered = registry.get(job.name)!;
    const scheduleId = job.data?.scheduleId ?? job.repeatJobKey;
    const schedule = scheduleId ? this.schedules.get(scheduleId) : undefined;
    const scheduledFor = (job.opts as { prevMillis?: number }).prevMillis ?? job.timestamp + (job.delay ?? 0);
    const attempt = job.attemptsMade + 1;
    const run: RunStart = {
      queue: job.queueName,
      jobId: job.id!,
      job: job.name,
      // Only a configured target name reaches history and metric labels, never raw input.
      target: knownTarget(connections.config, job.data?.payload?.target),
      payload: job.data?.payload,
      trigger: job.data?.trigger ?? (scheduleId ? `schedule:${scheduleId}` : 'ad-hoc'),
      scheduledFor: new Date(scheduledFor),
      attempt,
      worker: this.workerId,
      recovered: job.stalledCounter > 0,
    };
    const ctx = new RunContext(job, connections, this.opts.logger, attempt, run.trigger);

    let payload: JobData['payload'];
    try {
      // A job written behind the API (Bull Board's "add", a script on Redis) meets the
      // same strict checks as an enqueue: its data is {payload, trigger?, scheduleId?}.
      checkJobData(job.data);
      payload = registry.parsePayload(job.name, job.data.payload);
      ctx.checked(payload.target);
    } catch (err) {
      const message = err instanceof PayloadError ? err.message : describeError(coerceError(err));
      const code = errorCode(err);
      await history.finish(history.start(run), 'failed', { error: message, errorCode: code });
      this.stat(run, 'failed');
      throw new UnrecoverableError(withCode(code, message));
    }

    // A maintenance pause (or a hold on this queue or job) keeps a governed run from starting:
    // it goes back to delayed, no attempt used, and is neither dropped nor counted as missed.
    const governed = this.opts.governor && isGoverned(registered.def) ? this.opts.governor : undefined;
    const hold = await governed?.heldBeforeStart({
      queue: job.queueName,
      jobId: job.id!,
      job: job.name,
      target: payload.target,
    });
    if (hold) {
      if (!this.holdLogged.has(job.id!)) {
        this.holdLogged.add(job.id!);
        await job.log(`${new Date().toISOString()} waiting to start: ${hold.reason}`).catch(() => undefined);
      }
      await job.moveToDelayed(Math.min(hold.until, Date.now() + HOLD_RECHECK_MS), token);
      throw new DelayedError();
    }
    this.holdLogged.delete(job.id!);

    if (scheduleId && !schedule)
      ctx.logger.warn(
        { scheduleId },
        'scheduled job from a schedule this process does not know; running it without overlap rules',
      );
    const skip = async (reason: string) => {
      await history.skipped(run, reason);
      this.stat(run, 'skipped');
      await job.log(`skipped: ${reason}`);
      ctx.logger.warn({ reason }, 'scheduled run skipped');
      return { skipped: reason };
    };
    const missed = schedule && this.missedRun(job, schedule, scheduledFor);
    if (missed) return skip(missed);
    // A heavy job runs only with a permit of its cluster; without one it waits, delayed.
    const permit = registered.run.heavy ? await this.clusterPermit(job, token, payload.target) : undefined;
    try {
      const overlapping = schedule && (await this.overlapGate(job, schedule, registered.run.timeoutMs + 60_000));
      if (overlapping) return await skip(overlapping);
      return await this.run(job, run, ctx, payload, schedule, permit);
    } finally {
      await permit
        ?.release()
        .catch((err) => ctx.logger.warn({ err }, 'heavy-job permit not released; its lease ends it'));
    }
  }

  /**
   * Takes a permit of the target's cluster, or moves the job back to delayed (no attempt used)
   * to ask again in about worker.heavyWaitMs, with jitter so waiting runs do not ask in step.
   */
  private async clusterPermit(job: Job<JobData>, token: string | undefined, target: string): Promise<RunPermit> {
    const { config } = this.opts.connections;
    // The cluster its connection budget counts against too: the target's `cluster`, or host:port of its URL.
    const { cluster } = this.opts.connections.target(target);
    const permit = new RunPermit(this.permits, cluster, `${job.queueName}:${job.id}:${token ?? ''}`, config.worker);
    const waiting = await permit.retake();
    if (!waiting) return permit;
    // Logged to the job once per attempt (later waits of the same attempt stay quiet).
    if (job.attemptsStarted - job.attemptsMade - job.stalledCounter <= 1) await job.log(waiting).catch(() => undefined);
    await job.moveToDelayed(Date.now() + Math.round(config.worker.heavyWaitMs * (0.75 + Math.random() / 2)), token);
    throw new DelayedError();
  }

  /** Runs the handler: the history row, the maximum run time, the outcome. */
  private async run(
    job: Job<JobData>,
    run: RunStart,
    ctx: RunContext,
    payload: JobData['payload'],
    schedule: ResolvedSchedule | undefined,
    permit: RunPermit | undefined,
  ): Promise<unknown> {
    const { registry, history, connections } = this.opts;
    const registered = registry.get(job.name)!;
    const attempt = run.attempt;

    // The 'running' row is written while the handler starts; a fast run's start and
    // finish become one row (committed before the job counts as done only with
    // history.synchronous).
    const historyId = history.start(run);
    const startedAt = Date.now();
    const { abort } = ctx;
    this.running.set(job.id!, abort);
    const timer = setTimeout(
      () =>
        abort.abort(
          new JobTimeoutError(
            `timed out after ${Math.round(registered.run.timeoutMs / 1000)}s (maximum run time of ${job.name}); ` +
              `child processes killed`,
          ),
        ),
      registered.run.timeoutMs,
    );

    const governed = this.opts.governor && isGoverned(registered.def) ? this.opts.governor : undefined;
    const governor: RunGovernorHandle | undefined = governed?.forRun({
      queue: job.queueName,
      jobId: job.id!,
      job: job.name,
      target: payload.target,
      override: payload.governor,
      abort: (reason: Error) => abort.abort(reason),
      signal: abort.signal,
      timeoutAt: startedAt + registered.run.timeoutMs,
      report: (line: string) => ctx.note(line),
      logger: ctx.logger,
      holdings: runHoldings(permit, ctx.pool),
    });
    if (governor) ctx.governor = governor;
    const handling = ctx.runHandler(() => registered.def.handler(ctx, payload));
    handling.catch(() => undefined);
    try {
      let result = await Promise.race([handling, abort.aborted]);
      await governor?.close(true);
      // A run that stopped deferred and returned what it did says so in its result.
      if (governor?.deferral && result && typeof result === 'object' && !Array.isArray(result))
        result = { ...result, deferred: governor.deferral };
      // A succeeded run shows 100 % in Bull Board, whatever its last step reported. A run
      // that reported progress gets the event its followers wait for; one that reported
      // none gets the field alone (BullMQ's progress field, as its updateProgress writes
      // it): an event per run is a measurable share of a no-op job's cost.
      if (job.progress !== 100) {
        if (ctx.reported) await job.updateProgress(100).catch(() => undefined);
        else this.progressDone.add(`${connections.config.redis.prefix}:${job.queueName}:${job.id}`);
      }
      await history.finish(historyId, 'succeeded', { result });
      this.stat(run, governor?.deferral ? 'deferred' : 'succeeded', startedAt);
      if (this.opts.logger.isLevelEnabled('info')) ctx.logger.info('run succeeded');
      return result;
    } catch (thrown) {
      // Aborted (timeout, shutdown, cancel): give the handler a moment to kill its
      // children and remove its temporary files, so the run is not reported failed
      // while a partial file still lies there.
      if (abort.reason)
        await Promise.race([
          handling.catch(() => undefined),
          new Promise((r) => setTimeout(r, ABORT_CLEANUP_MS).unref()),
        ]);
      const err = coerceError(thrown);
      await governor?.close(false);
      // Held past its window or budget: a clean stop, not a failure; the next run goes on from there.
      if (err instanceof GovernorDeferredError && !abort.reason) {
        const result = { deferred: err.deferral };
        await history.finish(historyId, 'succeeded', { result });
        this.stat(run, 'deferred', startedAt);
        await job.log(`${new Date().toISOString()} ${err.message}`).catch(() => undefined);
        ctx.logger.warn({ deferred: err.deferral }, 'run deferred by load');
        return result;
      }
      const kind = classifyError(err);
      const message = describeError(err);
      // The code leads what Bull Board shows (failedReason) and is what history and alerts keep.
      const code = errorCode(err);
      const reason = withCode(code, message);
      const final = kind !== 'retryable' || attempt >= registered.run.attempts;
      const outcome = kind === 'timeout' ? 'timed_out' : final ? 'failed' : 'retrying';
      await history
        .finish(historyId, outcome, { error: message, errorCode: code })
        .catch((e) => ctx.logger.error({ err: e }, 'history update failed'));
      this.stat(run, outcome, startedAt);
      await job.log(`${new Date().toISOString()} ${outcome}: ${reason}`).catch(() => undefined);
      ctx.logger.error({ err, outcome, kind, code }, 'run failed');
      if (kind !== 'retryable') throw new UnrecoverableError(reason);
      throw new Error(reason, { cause: err });
    } finally {
      clearTimeout(timer);
      this.running.delete(job.id!);
      if (schedule && schedule.overlap === 'skip')
        await this.redis.eval(RELEASE_LOCK, 1, this.lockKey(schedule.id), job.id!).catch(() => undefined);
    }
  }

  /**
   * Stops taking jobs and waits for running ones; after `timeoutMs` running jobs
   * are aborted (child processes killed) and go back for a retry elsewhere.
   */
  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    const closing = Promise.all(this.workers.map((w) => w.close()));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      closing.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.opts.logger.warn({ running: [...this.running.keys()] }, 'shutdown timeout: aborting running jobs');
      for (const c of this.running.values())
        c.abort(new JobAbortedError('worker shutting down; the job will be retried'));
      await closing;
    }
    await Promise.all([this.stats.flush(), this.progressDone.flush()]);
    await this.queues.close();
  }
}
