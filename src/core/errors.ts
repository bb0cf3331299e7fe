// The one error model. Every error pgmaint raises on purpose has a stable `code`;
// callers switch on the code (the CLI's exit status, the HTTP status, the retry
// decision), never on the message. Anything a job handler throws is coerced to an
// Error and classified from its class, its PostgreSQL SQLSTATE or its errno.
import { UnrecoverableError } from 'bullmq';
import { redact } from './redact.ts';

/** The environment or the config file is invalid; the message names the variable or key. Exit 2. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly code = 'CONFIG';
}

/** One refused field of a payload: where, and why. */
export interface FieldIssue {
  path: string;
  message: string;
}

/** A job payload (or job data) that is refused, field by field. HTTP 400, exit 2; a worker
 * fails the job without retry. */
export class PayloadError extends Error {
  override name = 'PayloadError';
  readonly code = 'PAYLOAD';
  constructor(readonly issues: FieldIssue[]) {
    super(`invalid payload: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  }
}

/**
 * A failure that no retry can fix: a missing relation, a denied permission, a bad
 * policy. `code` is PERMANENT or a more precise stable reason (POLICY, BACKUP_DIR,
 * WAL_ARCHIVE_DIR, UNKNOWN_TARGET, BAD_KEY, ARCHIVE_UNHEALTHY, …).
 */
export class PermanentJobError extends Error {
  override name = 'PermanentJobError';
  constructor(
    message: string,
    readonly code = 'PERMANENT',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A restore asked for what must not be done, or for what does not exist (the live
 * database, a database that is not empty, an unknown label, a time with no backup
 * before it): the field, and why. Never retried; `enqueue --wait` exits 2 on it.
 */
export class RefusedError extends PermanentJobError {
  override name = 'RefusedError';
  constructor(
    readonly field: string,
    why: string,
  ) {
    super(`${field}: ${why}`, 'REFUSED');
  }
}

/** A check found damaged data (amcheck, a checksum): never retried; the `corruption` alert fires on this code. */
export class CorruptionError extends PermanentJobError {
  override name = 'CorruptionError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'CORRUPTION', options);
  }
}

/** A command line that cannot mean anything: an unknown flag, a bad number. Exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  readonly code = 'USAGE';
}

/** Redis, PostgreSQL or the pgmaint server (PGMAINT_URL) did not answer, or asks to try again later; the
 * message names the variable that points at it. Exit 3. */
export class ServiceUnavailableError extends Error {
  override name = 'ServiceUnavailableError';
  readonly code = 'UNAVAILABLE';
}

/** The pgmaint server did not accept the token (HTTP 401): a wrong or missing PGMAINT_TOKEN. Exit 5. */
export class UnauthenticatedError extends Error {
  override name = 'UnauthenticatedError';
  readonly code = 'UNAUTHENTICATED';
}

/** The token is valid but may not do this (HTTP 403): a viewer token asked to write. Exit 4. */
export class ForbiddenError extends Error {
  override name = 'ForbiddenError';
  readonly code = 'FORBIDDEN';
}

/** A child process (pg_dump, pg_restore, …) failed; the message names the tool and its last stderr lines. */
export class ProcessError extends Error {
  override name = 'ProcessError';
  readonly code = 'PROCESS_FAILED';
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly signal: NodeJS.Signals | null = null,
  ) {
    super(message);
  }
}

/** An S3 request failed after its attempts (or the object is missing); the message names the bucket and the key. */
export class ObjectStoreError extends Error {
  override name = 'ObjectStoreError';
  readonly code = 'OBJECT_STORE';
}

/** The run exceeded its maximum run time; its child processes were killed. */
export class JobTimeoutError extends Error {
  override name = 'JobTimeoutError';
  readonly code = 'TIMEOUT';
}

/** The worker is shutting down and aborted the run; another worker will retry it. */
export class JobAbortedError extends Error {
  override name = 'JobAbortedError';
  readonly code = 'ABORTED';
}

/**
 * The load governor saw a critical threshold crossed (docs/governor.md) and aborted the run
 * at once; its sessions and children are ended, its journals leave nothing half-done, and a
 * retry (or the next run) goes on from there.
 */
export class GovernorAbortedError extends Error {
  override name = 'GovernorAbortedError';
  readonly code = 'GOVERNOR_ABORTED';
}

/** What a run deferred by load reports (its result's `deferred`). */
export interface Deferral {
  /** Why it was held: "throttled: replica lag 42 s > 30 s", "paused by hand …". */
  reason: string;
  /** What it stopped at: the window (maxPauseSeconds), its budget, or its maximum run time. */
  limit: string;
  /** The unit of work it was about to start (or the stream it was in). */
  unit: string;
  heldSeconds: number;
}

/**
 * The run was held by the governor past its window or its budget: it stops cleanly before
 * its next unit, and the next run goes on from there. Not a failure: the worker records the
 * run as succeeded with `deferred` in its result.
 */
export class GovernorDeferredError extends Error {
  override name = 'GovernorDeferredError';
  readonly code = 'DEFERRED';
  constructor(readonly deferral: Deferral) {
    super(`deferred by load: ${deferral.reason}; held ${Math.round(deferral.heldSeconds)} s, past ${deferral.limit}`);
  }
}

/** pgmaint's own errors: their `code` is the stable code of a run that fails with them. */
const OUR_ERRORS = [
  ConfigError,
  PayloadError,
  PermanentJobError,
  UsageError,
  ServiceUnavailableError,
  UnauthenticatedError,
  ForbiddenError,
  ProcessError,
  ObjectStoreError,
  JobTimeoutError,
  JobAbortedError,
  GovernorAbortedError,
  GovernorDeferredError,
];

/** The code of a failure nobody raised on purpose (a bug, a library's plain Error). */
export const INTERNAL_CODE = 'INTERNAL';

const SQLSTATE = /^(?=[A-Z]*\d)[0-9A-Z]{5}$/;
const ERRNO = /^E[A-Z][A-Z0-9_]+$/;

/**
 * The stable code a failed run is recorded (run_history.error_code), alerted and shown under:
 * pgmaint's own errors' `code`; PG_<SQLSTATE> for PostgreSQL's; a system errno (ECONNREFUSED,
 * ENOSPC, …) as it is; PERMANENT for BullMQ's UnrecoverableError; else the code of its cause
 * (an error wrapped to say more keeps its origin's), else INTERNAL.
 */
export function errorCode(err: unknown): string {
  let e = err;
  for (let depth = 0; e instanceof Error && depth < 5; depth++, e = e.cause) {
    if (OUR_ERRORS.some((c) => e instanceof c)) return (e as unknown as { code: string }).code;
    if (e instanceof UnrecoverableError) return 'PERMANENT';
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && SQLSTATE.test(code)) return `PG_${code}`;
    if (typeof code === 'string' && ERRNO.test(code)) return code;
  }
  return INTERNAL_CODE;
}

/** "CODE: message", as Bull Board shows a failed run (the code is not doubled when the message starts with it). */
export function withCode(code: string, message: string): string {
  return message.startsWith(`${code}: `) ? message : `${code}: ${message}`;
}

// SQLSTATEs worth a retry (class 08 connection exceptions are handled by prefix).
const RETRYABLE_SQLSTATE = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available (lock_timeout)
  '57P03', // cannot_connect_now (starting up, recovery)
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '53300', // too_many_connections
  '53400', // configuration_limit_exceeded
  '57014', // query_canceled (statement_timeout) — transient by nature
]);

// SQLSTATE classes that a retry will never fix.
const PERMANENT_SQLSTATE_CLASS = new Set(['22', '23', '25', '26', '28', '2B', '3D', '3F', '42', '44']);

const RETRYABLE_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

export function coerceError(err: unknown): Error {
  if (err instanceof Error) return err;
  return new Error(typeof err === 'string' ? err : JSON.stringify(err), { cause: err });
}

export type ErrorClass = 'retryable' | 'permanent' | 'timeout';

export function classifyError(err: Error): ErrorClass {
  if (err instanceof JobTimeoutError) return 'timeout';
  if (err instanceof PermanentJobError || err instanceof UnrecoverableError) return 'permanent';
  if (err instanceof JobAbortedError || err instanceof GovernorAbortedError) return 'retryable';
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (RETRYABLE_SQLSTATE.has(code) || code.startsWith('08') || RETRYABLE_ERRNO.has(code)) return 'retryable';
    if (/^[0-9A-Z]{5}$/.test(code) && PERMANENT_SQLSTATE_CLASS.has(code.slice(0, 2))) return 'permanent';
  }
  if (/the database system is (starting up|shutting down)|Connection terminated/i.test(err.message)) return 'retryable';
  // Unknown failures get the job's remaining attempts.
  return 'retryable';
}

/** One line for history, logs and failedReason, secrets masked, SQLSTATE kept. */
export function describeError(err: Error): string {
  const code = (err as { code?: unknown }).code;
  const sqlstate = typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? ` (SQLSTATE ${code})` : '';
  return redact(`${err.message}${sqlstate}`);
}

/** Exit status of the CLI for an error, by its stable code: 2 refused, 3 unreachable, 4 the token may
 * not do this, 5 the token is not accepted, 1 anything else (docs/api.md). */
const EXIT_BY_CODE: Record<string, number> = {
  USAGE: 2,
  CONFIG: 2,
  PAYLOAD: 2,
  UNAVAILABLE: 3,
  FORBIDDEN: 4,
  UNAUTHENTICATED: 5,
};

export function exitCodeFor(err: unknown): number {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? (EXIT_BY_CODE[code] ?? 1) : 1;
}
