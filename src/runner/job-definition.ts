// What a job file in jobs/ exports: its name, its payload schema (with defaults)
// and its handler. Everything else (queues, retries, history) is the runner's.
import type { Transform } from 'node:stream';
import { z } from 'zod';
import type pg from 'pg';
import type { Config, TargetConfig } from '../core/config.ts';
import type { Logger } from '../core/logger.ts';
import type { LibpqSettings } from '../core/libpq.ts';
import type { FieldIssue } from '../core/errors.ts';
import type { Gentle } from '../core/gentle.ts';
import { TARGET_NAME } from '../core/config.ts';
import { MAIN_TARGET } from '../core/constants.ts';

/** Every payload names its target database; never a URL. */
export const targetField = z
  .string()
  .regex(TARGET_NAME, 'must be a target name (lower-case letters, digits, _ and -)')
  .default(MAIN_TARGET);

export interface RunDefaults {
  /** Attempts in all, the first included. */
  attempts: number;
  /** First retry delay; doubles each attempt, with jitter. */
  backoffMs: number;
  /** Maximum run time; the handler is aborted and child processes killed after it. */
  timeoutMs: number;
  /** Jobs of this kind run at once in one worker process. */
  concurrency: number;
  /**
   * A heavy job loads its target's whole cluster (VACUUM, pg_dump, REINDEX, amcheck): it runs
   * only with one of the cluster's `worker.heavyJobsPerCluster` permits, so two never run on
   * one host at once (runner/cluster-permits.ts).
   */
  heavy?: boolean;
}

/** How a unit of work meets the governor (docs/governor.md). */
export interface GateOptions {
  /** The unit only reads: a standby's replay lag does not hold it (it adds no WAL). */
  readOnly?: boolean;
  /** The run's own budget ends here (epoch ms): held past it, the run stops as deferred. */
  deadline?: number;
  /** Called once before the run starts to wait (commit an open batch: nothing is held while it waits). */
  beforeWait?: () => Promise<void>;
}

/**
 * The load governor as a run sees it. Heavy jobs work in units and await `gate` before each
 * one: it resolves at once while the target is quiet, waits while it is loaded or the run
 * is held by hand, and throws a GovernorDeferredError once held past the window or the
 * deadline (stop cleanly there: the next run goes on). A critical load aborts the run
 * through its signal (GovernorAbortedError). Streams pass through a `pacer`, which stops
 * reading while the run is held.
 */
export interface RunGovernor {
  gate(unit: string, opts?: GateOptions): Promise<void>;
  /** A pass-through stream for one stream of the run; it fails with a GovernorDeferredError past the window. */
  pacer(unit: string, opts?: Pick<GateOptions, 'readOnly'>): Transform;
  /** pg_basebackup --max-rate from the policy, when it sets one. */
  readonly baseBackupMaxRate: string | null;
  /** How the units themselves are made gentler while governed (core/gentle.ts); null with the governor off. */
  readonly gentle: Gentle | null;
}

/** One thing a job needs of its worker's machine, and why (said when a worker lacks it). */
export interface NeedUse {
  /** Why the job needs it, in a few words: "its partition archives are written there". */
  why: string;
  /** Only under this configuration (e.g. when some partition policy archives); always when absent. */
  when?: (config: Config) => boolean;
}

/**
 * What a job needs of the machine its worker runs on, beyond Redis and the targets
 * (src/runner/needs.ts says what each means and checks it). A job without needs runs SQL
 * only. The worker entry points derive their queues from these, and a worker refuses at
 * start a queue whose needs it lacks.
 */
export interface JobNeeds {
  /** BACKUP_DIR is set and writable here. */
  backupDir?: NeedUse;
  /** Each native-engine target's walArchiveDir (WAL_ARCHIVE_DIR for main) is readable here. */
  walArchive?: NeedUse;
  /** These tools are in PG_BINDIR. */
  pgBinaries?: NeedUse & { tools: readonly string[] };
  /** The programs the backup engines of the targets run are on PATH (BACKUP_ENGINES in core/config-schema.ts). */
  engineTools?: NeedUse;
  /** The bucket's credential variables are set, when objectStore is configured. */
  objectStore?: NeedUse;
}

export interface JobContext {
  jobId: string;
  attempt: number;
  trigger: string;
  config: Config;
  target: TargetConfig;
  /** Pool for the job's target database. */
  pool: pg.Pool;
  logger: Logger;
  /** Aborted on timeout or shutdown; pass it to child processes. */
  signal: AbortSignal;
  /** This attempt's application_name (`pgmaint/<job>/<id>/<random>`): sessions that
   * carry it are terminated when the run is aborted. */
  appName: string;
  /** libpq settings for child processes (pg_dump, psql) on the target (`libpq` of runProcess:
   * the password goes through a passfile). Their sessions carry this run's application_name,
   * so an abort also ends them server-side. */
  libpqSettings(): LibpqSettings;
  /**
   * `fn` on one session of the target's pool, given back however fn ends; `reset` (SQL) first undoes what
   * fn left on the session (settings, advisory locks). A session that broke meanwhile is closed, not pooled.
   */
  withClient<T>(fn: (client: pg.PoolClient) => Promise<T>, opts?: { reset?: string | pg.QueryConfig }): Promise<T>;
  /** Progress 0–100 with a short step name, shown in Bull Board. */
  progress(percent: number, step: string): Promise<void>;
  /** A log line in Bull Board and in the process log. */
  log(message: string, fields?: Record<string, unknown>): Promise<void>;
  /** The load governor of this run (a no-op for jobs that are not governed). */
  governor: RunGovernor;
}

export interface JobDefinition<
  S extends z.ZodObject<{ target: typeof targetField }> = z.ZodObject<{ target: typeof targetField }>,
  R = unknown,
> {
  name: string;
  description: string;
  payload: S;
  defaults: RunDefaults;
  /**
   * An identical request (same job, same payload after defaults) while one waits or
   * runs gets that job back instead of a second one ("backup now" pressed twice).
   * Requests that differ in any field are never merged.
   */
  deduplicate?: boolean;
  /** What it needs of its worker's machine (BACKUP_DIR, binaries, …); none: SQL only. */
  needs?: JobNeeds;
  /**
   * Checks of fields that name configured things (tables with a partition policy,
   * declared cache keys, targets), run when the job is asked for, not only when it runs.
   */
  checkConfig?: (payload: z.output<S>, config: Config) => FieldIssue[];
  handler(ctx: JobContext, payload: z.output<S>): Promise<R>;
}

/** The result type of a job definition: what its handler returns (what history and the API show). */
export type JobResult<J> = J extends JobDefinition<infer _S, infer R> ? R : never;

export type AnyJobDefinition = JobDefinition<z.ZodObject<{ target: typeof targetField }>, unknown>;

export function defineJob<S extends z.ZodObject<{ target: typeof targetField }>, R>(
  def: JobDefinition<S, R>,
): JobDefinition<S, R> {
  return def;
}
