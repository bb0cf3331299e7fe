// What a handler sees of its run (JobContext), and the run's abort. One of each is
// made per attempt, so both are classes: a per-run closure costs more than its call
// (each is also named at run time where pgmaint runs through tsx).
import { randomBytes } from 'node:crypto';
import type { Job } from 'bullmq';
import type pg from 'pg';
import type { Config, TargetConfig } from '../core/config.ts';
import { type LibpqSettings, libpqSettings } from '../core/libpq.ts';
import type { Logger } from '../core/logger.ts';
import { withClient } from '../core/sql.ts';
import { RunSessions, runScope, type SessionOwner } from './budgeted-pool.ts';
import type { Connections } from './connections.ts';
import { OPEN_GOVERNOR } from './governor-port.ts';
import type { JobContext, RunGovernor } from './job-definition.ts';
import type { JobData } from './queues.ts';

/**
 * A run's abort (timeout, shutdown). Its AbortSignal is made only when the handler asks
 * for it: most short runs never do, and a signal per run is a measurable share of a
 * no-op job's cost.
 */
export class RunAbort {
  reason?: Error;
  /** Rejects with the reason once the run is aborted. */
  readonly aborted: Promise<never>;
  private controller?: AbortController;
  private rejectAborted!: (reason: Error) => void;

  constructor(private readonly onAbort: () => void) {
    this.aborted = new Promise<never>((_, reject) => {
      this.rejectAborted = reject;
    });
    this.aborted.catch(() => undefined);
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: Error): void {
    if (this.reason) return;
    this.reason = reason;
    this.controller?.abort(reason);
    this.onAbort();
    this.rejectAborted(reason);
  }
}

export class RunContext implements JobContext, SessionOwner {
  /** Whether the handler reported progress (then the final 100 % is sent as an event too). */
  reported = false;
  /** The last percent reported, for lines the governor adds at the same progress. */
  private percent = 0;
  /** Set by the worker for governed jobs. */
  governor: RunGovernor = OPEN_GOVERNOR;
  readonly abort: RunAbort;
  private child?: Logger;
  private applicationName?: string;
  private checkedTarget?: string;

  constructor(
    private readonly job: Job<JobData>,
    private readonly connections: Connections,
    private readonly baseLogger: Logger,
    readonly attempt: number,
    readonly trigger: string,
  ) {
    this.abort = new RunAbort(() => this.endSessions());
  }

  /** Called once the payload is checked: its target is then a configured one. */
  checked(targetName: string): void {
    this.checkedTarget = targetName;
  }

  private get targetName(): string {
    if (!this.checkedTarget) throw new Error('the run context was used before its payload was checked');
    return this.checkedTarget;
  }

  get jobId(): string {
    return this.job.id!;
  }

  get config(): Config {
    return this.connections.config;
  }

  get target(): TargetConfig {
    return this.connections.target(this.targetName);
  }

  get pool() {
    return this.connections.pool(this.targetName);
  }

  /** Made on first use: at warn level a run that goes well never logs. */
  get logger(): Logger {
    this.child ??= this.baseLogger.child({
      queue: this.job.queueName,
      jobId: this.job.id,
      job: this.job.name,
      target: this.job.data?.payload?.target,
    });
    return this.child;
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get aborted(): Promise<never> {
    return this.abort.aborted;
  }

  /**
   * Runs the handler as this run: its checkouts are admitted on their cluster and keep to
   * its connection budget (budgeted-pool.ts); the run's admission ends when the handler
   * settles, also after an abort.
   */
  runHandler<T>(handler: () => Promise<T>): Promise<T> {
    const sessions = new RunSessions(this);
    return runScope.run(sessions, async () => handler()).finally(() => sessions.end());
  }

  /**
   * Unique to this attempt: an abort ends this attempt's sessions and no one else's, not
   * those of another deployment's job with the same id on the same server. Made when a
   * session first needs it; a run that never asks has no such session to end.
   */
  get appName(): string {
    if (!this.applicationName) {
      // 63 bytes at most (PostgreSQL's limit); the random tag is never the part cut off.
      const run = `pgmaint/${this.job.name}/${this.job.id}`.slice(0, 63 - 7);
      this.applicationName = `${run}/${randomBytes(3).toString('hex')}`;
    }
    return this.applicationName;
  }

  libpqSettings(): LibpqSettings {
    return libpqSettings(this.target, this.appName);
  }

  withClient<T>(fn: (client: pg.PoolClient) => Promise<T>, opts?: { reset?: string | pg.QueryConfig }): Promise<T> {
    return withClient(this.pool, fn, opts);
  }

  async progress(percent: number, step: string): Promise<void> {
    this.reported = true;
    this.percent = Math.max(0, Math.min(100, Math.round(percent)));
    await this.job.updateProgress(this.percent);
    await this.job.log(`${new Date().toISOString()} [${Math.round(percent)}%] ${step}`);
    this.logger.info({ percent, step }, 'progress');
  }

  /** A step at the current progress ("throttled: replica lag 42 s > 30 s"), in Bull Board's log. */
  note(step: string): Promise<void> {
    return this.progress(this.percent, step);
  }

  async log(message: string, fields?: Record<string, unknown>): Promise<void> {
    await this.job.log(`${new Date().toISOString()} ${message}`);
    this.logger.info(fields ?? {}, message);
  }

  /** A killed client does not stop its backend (pg_sleep, a waiting lock): end them too. */
  private endSessions(): void {
    if (!this.applicationName) return;
    this.pool
      .query(
        'select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1 and pid <> ' +
          'pg_backend_pid()',
        [this.applicationName],
      )
      .catch((err) => this.logger.warn({ err }, "could not end the aborted run's sessions"));
  }
}
