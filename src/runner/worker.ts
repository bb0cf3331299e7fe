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
import { MAIN_TARGET } from '../core/constants.ts';
import { ClusterPermits, type Lease } from './cluster-permits.ts';

export interface WorkerRuntimeOptions {
  connections: Connections;
  registry: Registry;
  history: RunHistory;
  logger: Logger;
  schedules: readonly ResolvedSchedule[];
  /** Job kinds (= queue names) this process serves; all when omitted. */
  only?: string[];
}

/** How long an aborted handler may take to clean up before the run is reported. */
const ABORT_CLEANUP_MS = 15_000;

// Releases a schedule's overlap lock only if this job still holds it.
const RELEASE_LOCK =
  `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 ` + `end`;

function knownTarget(config: { targets: Map<string, unknown> }, target: unknown): string {
  if (target === undefined) return MAIN_TARGET;
  return typeof target === 'string' && config.targets.has(target) ? target : '(invalid)';
}

const JOB_DATA_KEYS = ['payload', 'trigger', 'scheduleId'];

/** Refuses job data that is not {payload: {…}, trigger?, scheduleId?}, naming the key. */
function checkJobData(data: unknown): asserts data is JobData {
  if (!data || typeof data !== 'object' || Array.isArray(data))
    throw new PayloadError([{ path: '(job data)', message: 'must be an object {"payload": {…}}' }]);
  const unknown = Object.keys(data).filter((k) => !JOB_DATA_KEYS.includes(k));
  const issues = unknown.map((k) => ({
    path: k,
    message: `unknown key in job data (known: ${JOB_DATA_KEYS.join(', ')}; payload fields go under "payload")`,
  }));
  const d = data as Record<string, unknown>;
  if (!d.payload || typeof d.payload !== 'object' || Array.isArray(d.payload))
    issues.push({
      path: 'payload',
      message: 'is required: an object of the job\'s payload fields, e.g. {"payload": {}}',
    });
  if (d.trigger !== undefined && typeof d.trigger !== 'string')
    issues.push({ path: 'trigger', message: 'must be a string' });
  if (issues.length) throw new PayloadError(issues);
}

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
    // was taken in time and then waited for its cluster's permit (started before).
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
    const lease = registered.run.heavy ? await this.clusterPermit(job, token, payload.target) : undefined;
    try {
      const overlapping = schedule && (await this.overlapGate(job, schedule, registered.run.timeoutMs + 60_000));
      if (overlapping) return await skip(overlapping);
      return await this.run(job, run, ctx, payload, schedule);
    } finally {
      await lease
        ?.release()
        .catch((err) => ctx.logger.warn({ err }, 'heavy-job permit not released; its lease ends it'));
    }
  }

  /**
   * Takes a permit of the target's cluster, or moves the job back to delayed (no attempt used)
   * to ask again in about worker.heavyWaitMs, with jitter so waiting runs do not ask in step.
   */
  private async clusterPermit(job: Job<JobData>, token: string | undefined, target: string): Promise<Lease> {
    const { config } = this.opts.connections;
    // The cluster its connection budget counts against too: the target's `cluster`, or host:port of its URL.
    const { cluster } = this.opts.connections.target(target);
    const taken = await this.permits.take(cluster, `${job.queueName}:${job.id}:${token ?? ''}`);
    if (taken.lease) return taken.lease;
    // Logged to the job once per attempt (later waits of the same attempt stay quiet).
    if (job.attemptsStarted - job.attemptsMade - job.stalledCounter <= 1) {
      const holders = taken.heldBy.map((h) => h.replace(/:[^:]*$/, '')).join(', ');
      const limit = config.worker.heavyJobsPerCluster;
      await job
        .log(`waiting for a heavy-job permit of cluster ${cluster} (${limit} at once; held by ${holders})`)
        .catch(() => undefined);
    }
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

    const handling = ctx.runHandler(() => registered.def.handler(ctx, payload));
    handling.catch(() => undefined);
    try {
      const result = await Promise.race([handling, abort.aborted]);
      // A succeeded run shows 100 % in Bull Board, whatever its last step reported. A run
      // that reported progress gets the event its followers wait for; one that reported
      // none gets the field alone (BullMQ's progress field, as its updateProgress writes
      // it): an event per run is a measurable share of a no-op job's cost.
      if (job.progress !== 100) {
        if (ctx.reported) await job.updateProgress(100).catch(() => undefined);
        else this.progressDone.add(`${connections.config.redis.prefix}:${job.queueName}:${job.id}`);
      }
      await history.finish(historyId, 'succeeded', { result });
      this.stat(run, 'succeeded', startedAt);
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
