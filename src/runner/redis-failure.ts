// What a caller is told when Redis does not answer: one wording everywhere (API, Bull
// Board, /metrics, the CLI), naming the variable that points at Redis.
import type { Config } from '../core/config.ts';
import { ServiceUnavailableError } from '../core/errors.ts';
import { safeUrl } from '../core/redact.ts';
import { REDIS_COMMAND_TIMEOUT_MS } from './connections.ts';

/** "Redis (REDIS_URL redis://host:6379)": how every message names Redis. */
export function redisLabel(config: Config): string {
  return `Redis (REDIS_URL ${safeUrl(config.redis.url)})`;
}

/**
 * What went wrong, when `err` is about reaching Redis (a bounded connection's timeout, a
 * connection that is down or closed), not about the command itself; else undefined.
 */
export function redisFailure(err: unknown): string | undefined {
  const message = err instanceof Error ? err.message : '';
  if (message === 'Command timed out') return `did not answer within ${REDIS_COMMAND_TIMEOUT_MS / 1000} s`;
  if (/enableOfflineQueue options is false|Connection is closed|max retries per request/i.test(message))
    return 'is not connected';
  return undefined;
}

/** `Redis (REDIS_URL …) did not answer within 2.5 s`, or undefined when `err` is not about reaching Redis. */
export function redisFailureMessage(config: Config, err: unknown): string | undefined {
  if (err instanceof ServiceUnavailableError) return err.message;
  const failure = redisFailure(err);
  return failure && `${redisLabel(config)} ${failure}`;
}

/**
 * `p`'s outcome if it settles within `ms`, else the error `late()` makes. Before it gives up it
 * lets the event loop read what the sockets already hold (setImmediate runs after pending
 * I/O), so a process that was itself stalled never takes an answer that has arrived for a
 * timeout.
 */
export function settleWithin<T>(p: Promise<T>, ms: number, late: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => setImmediate(() => reject(late())), Math.max(0, ms));
    p.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
