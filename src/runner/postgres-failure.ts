// What a caller is told when PostgreSQL does not answer a read someone waits for (the API's
// run history, /readyz, the health reading): one wording, naming the variable that points at
// the database, like redis-failure.ts does for Redis.
import type { TargetConfig } from '../core/config.ts';
import { safeUrl } from '../core/redact.ts';

/** Such a read (a query) is given up after this without an answer; pg then closes its session. */
export const PG_ANSWER_TIMEOUT_MS = 3000;

/** "PostgreSQL (DATABASE_URL postgres://pgmaint:***@host:5432/db)": how every message names it. */
export function postgresLabel(target: TargetConfig): string {
  return `PostgreSQL (${target.urlSource} ${safeUrl(target.url)})`;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EPIPE']);

/**
 * What went wrong, when `err` is about reaching PostgreSQL (no answer in time, refused, the
 * connection lost), not about the statement itself; else undefined.
 */
export function postgresFailure(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  const { message } = err;
  const code = (err as { code?: unknown }).code;
  if (
    message === 'Query read timeout' ||
    /timeout exceeded when trying to connect|Connection terminated due to connection timeout/.test(message)
  )
    return `did not answer within ${PG_ANSWER_TIMEOUT_MS / 1000} s`;
  if (typeof code === 'string' && UNREACHABLE.has(code)) return `is not reachable (${code})`;
  if (/Connection terminated|connection error|terminating connection/i.test(message)) return 'closed the connection';
  // the database system is starting up / shutting down / in recovery
  if (code === '57P03' || code === '57P01') return `is not accepting connections (${message})`;
  return undefined;
}

/** `PostgreSQL (DATABASE_URL …) did not answer within 3 s`, or undefined when `err` is not about reaching it. */
export function postgresFailureMessage(target: TargetConfig, err: unknown): string | undefined {
  const failure = postgresFailure(err);
  return failure && `${postgresLabel(target)} ${failure}`;
}
