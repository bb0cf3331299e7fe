// Assembles one process: config, logger, connections, registry, history, queues and
// schedules, in start-up order; close() takes them down in reverse.
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig, type Config } from '../core/config.ts';
import { ServiceUnavailableError } from '../core/errors.ts';
import { safeUrl } from '../core/redact.ts';
import { Connections, type RedisClient, type RedisMode } from './connections.ts';
import { RunHistory } from './history.ts';
import { PG_ANSWER_TIMEOUT_MS } from './postgres-failure.ts';
import { redisFailure } from './redis-failure.ts';
import type { AnyJobDefinition } from './job-definition.ts';
import { createLogger, type Logger } from '../core/logger.ts';
import { Queues } from './queues.ts';
import { Registry } from './registry.ts';
import {
  applyScheduleEntries,
  resolveSchedules,
  Scheduler,
  type ResolvedSchedule,
  type Schedule,
} from './scheduler.ts';

export interface RuntimeOptions {
  env?: NodeJS.ProcessEnv;
  config?: Config;
  jobs: readonly AnyJobDefinition[];
  /** The default schedules, or how to derive them from the config (one set per target). */
  schedules: readonly Schedule[] | ((config: Config) => readonly Schedule[]);
  logger?: Logger;
  /** The queues' Redis connection: bounded (default: the API, the board, the monitor, one-shot
   * commands answer within seconds) or patient (the worker role, which waits for Redis). */
  redis?: RedisMode;
}

export class Runtime {
  readonly connections: Connections;
  readonly registry: Registry;
  readonly history: RunHistory;
  readonly queues: Queues;
  readonly schedules: ResolvedSchedule[];
  readonly scheduler: Scheduler;
  private readonly closers: (() => Promise<void> | void)[] = [];
  private readonly finalizers: (() => Promise<void> | void)[] = [];

  constructor(
    readonly config: Config,
    readonly logger: Logger,
    jobs: readonly AnyJobDefinition[],
    schedules: RuntimeOptions['schedules'],
    redisMode: RedisMode = 'bounded',
  ) {
    ({ registry: this.registry, schedules: this.schedules } = resolveJobs(config, jobs, schedules));
    this.connections = new Connections(config);
    // History writes get a pool of their own so they never wait behind a job's queries.
    this.history = new RunHistory(this.connections.pool(config.history.target, 'history'), {
      synchronous: config.history.synchronous,
      onError: (err) => logger.error({ err }, 'run history write failed; will retry'),
      // Where someone waits for the reads (the API, /metrics, one-shot commands), a stalled
      // PostgreSQL costs a read PG_ANSWER_TIMEOUT_MS; the worker role's reads wait.
      readTimeoutMs: redisMode === 'bounded' ? PG_ANSWER_TIMEOUT_MS : undefined,
    });
    this.queues = new Queues(config, this.registry, this.connections.redis('pgmaint-queues', redisMode), redisMode);
    this.scheduler = new Scheduler(this.queues, this.registry, this.schedules, logger);
  }

  static create(opts: RuntimeOptions): Runtime {
    const config = opts.config ?? loadConfig(opts.env);
    const logger = opts.logger ?? createLogger(config.logLevel);
    return new Runtime(config, logger, opts.jobs, opts.schedules, opts.redis);
  }

  /** The schedules with their next runs and, from the run history, their last (what the API and CLI show). */
  async describeSchedules(now = Date.now()) {
    return this.scheduler.describe(now, await this.history.lastScheduledRuns());
  }

  /** Registers something to stop on close; the last registered stops first. */
  onClose(fn: () => Promise<void> | void): void {
    this.closers.push(fn);
  }

  /** Runs after everything is closed (the demo's own PostgreSQL and Redis). */
  afterClose(fn: () => Promise<void> | void): void {
    this.finalizers.push(fn);
  }

  /** Fails fast, naming REDIS_URL, when Redis does not answer (for one-shot commands). */
  async checkRedis(timeoutMs = 5000): Promise<void> {
    const connection = this.queues.connection;
    const giveUpAt = Date.now() + timeoutMs;
    try {
      // A bounded connection sends nothing before it is ready: wait for that first.
      await connected(connection, timeoutMs);
      await withTimeout(connection.ping(), Math.max(0, giveUpAt - Date.now()));
    } catch (err) {
      // A frozen Redis accepts the connection and never answers its first command: "did not answer within 2 s".
      throw new ServiceUnavailableError(
        `REDIS_URL: cannot reach ${safeUrl(this.config.redis.url)}: ${redisFailure(err) ?? (err as Error).message}`,
      );
    }
  }

  /** Fails fast, naming the variable, when the history target's PostgreSQL does not answer. */
  async checkPostgres(timeoutMs = 5000): Promise<void> {
    const target = this.connections.target(this.config.history.target);
    try {
      await withTimeout(this.connections.pool(target.name, 'history').query('select 1'), timeoutMs);
    } catch (err) {
      throw new ServiceUnavailableError(
        `${target.urlSource}: cannot reach PostgreSQL at ${safeUrl(target.url)} (target ${target.name}): ` +
          `${(err as Error).message}`,
      );
    }
  }

  /**
   * For long-running roles: waits for Redis and the history database, logging an
   * error that names the variable within 5 s and again at every retry, instead of
   * hanging silently until they come back.
   */
  async waitForServices(signal?: AbortSignal): Promise<void> {
    for (let attempt = 1, delay = 1000; ; attempt++, delay = Math.min(delay * 2, 30_000)) {
      const failures: string[] = [];
      await Promise.all([
        this.checkRedis(4000).catch((err) => failures.push((err as Error).message)),
        this.checkPostgres(4000).catch((err) => failures.push((err as Error).message)),
      ]);
      if (!failures.length) {
        if (attempt > 1) this.logger.info({ attempt }, 'Redis and PostgreSQL reachable; starting');
        return;
      }
      for (const f of failures) this.logger.error({ attempt, retryInMs: delay }, `${f}; retrying in ${delay / 1000}s`);
      await sleep(delay, undefined, { signal });
    }
  }

  async close(): Promise<void> {
    while (this.closers.length) {
      const fn = this.closers.pop()!;
      await Promise.resolve(fn()).catch((err) => this.logger.error({ err }, 'error during shutdown'));
    }
    this.scheduler.stop();
    await this.history.close();
    await this.queues.close();
    await this.connections.close();
    for (const fn of this.finalizers.reverse())
      await Promise.resolve(fn()).catch((err) => this.logger.error({ err }, 'error during shutdown'));
  }
}

/** Resolves once the connection is ready, or rejects after `ms`; a refused connection is reported at once. */
function connected(connection: RedisClient, ms: number): Promise<void> {
  if (connection.status === 'ready') return Promise.resolve();
  if (connection.status === 'end') return Promise.reject(new Error('the connection is closed'));
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      connection.off('ready', onReady);
      connection.off('error', done);
      if (err) reject(err);
      else resolve();
    };
    const onReady = () => done();
    const timer = setTimeout(() => done(new Error(`no answer in ${ms / 1000}s`)), ms);
    connection.once('ready', onReady);
    connection.once('error', done);
  });
}

/**
 * The job registry and the schedules a config gives, with every refusal of the config's
 * jobs and schedules sections; opens no connection.
 */
export function resolveJobs(
  config: Config,
  jobs: readonly AnyJobDefinition[],
  schedules: RuntimeOptions['schedules'],
): { registry: Registry; schedules: ResolvedSchedule[] } {
  const registry = new Registry(jobs, config);
  const defaults = typeof schedules === 'function' ? schedules(config) : schedules;
  return {
    registry,
    schedules: resolveSchedules(
      applyScheduleEntries(defaults, config.schedules, config.businessTimeZone),
      registry,
      config.scheduler.disabled,
    ),
  };
}

/** Rejects after `ms` with "no answer in Ns"; the late promise's own failure is swallowed. */
function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  p.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${ms / 1000}s`)), ms))),
  ]).finally(() => clearTimeout(timer));
}
