// Redis and PostgreSQL as the direct mode asks them. A command checks only the services it
// reads, once; then every answer it waits for comes within ANSWER_WITHIN_MS or the command
// ends with exit 3, naming what did not answer: a Redis that froze or went away after the
// check (a BullMQ queue made on a connection that is down waits for it forever), or a
// history database that stopped answering. Never a hang, never a bare "Command timed out".
import { ServiceUnavailableError } from '../core/errors.ts';
import { safeUrl } from '../core/redact.ts';
import { redisFailure, redisLabel, settleWithin } from '../runner/redis-failure.ts';
import type { Runtime } from '../runner/runtime.ts';

export type Service = 'redis' | 'postgres';

/** How long a direct command waits for one answer of Redis or PostgreSQL once they passed their check. */
export const ANSWER_WITHIN_MS = 5000;

/** How long each service is asked again (PING, `select 1`) to tell which one did not answer. */
const PROBE_MS = 1000;

/** The connection errors of node-postgres: the server went away or cannot be reached. */
const PG_CONNECTION_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH']);

class NoAnswer extends Error {}

export class Services {
  private readonly checked = new Set<Service>();

  constructor(private readonly runtime: () => Runtime) {}

  /** Each service answers within seconds (once per command), or exit 3 naming its variable. */
  async check(...services: Service[]): Promise<void> {
    const rt = this.runtime();
    for (const s of services) {
      if (this.checked.has(s)) continue;
      await (s === 'redis' ? rt.checkRedis() : rt.checkPostgres());
      this.checked.add(s);
    }
  }

  /**
   * `p`'s outcome when it settles within ANSWER_WITHIN_MS; else, or when it failed for want of
   * one of `services`, a ServiceUnavailableError naming it, with `consequence` (what that means
   * for the command: "; nothing was enqueued, try again"). A Redis connection that closes ends
   * the wait at once. `heartbeat`: Redis is also pinged every second meanwhile, and the first
   * ping it does not answer ends the wait (for a wait that sends nothing itself, such as a new
   * connection getting ready).
   */
  async within<T>(
    services: Service[],
    p: Promise<T>,
    consequence = '',
    opts: { heartbeat?: boolean } = {},
  ): Promise<T> {
    p.catch(() => undefined);
    const watchRedis = services.includes('redis');
    // A command on a connection that is down would be refused anyway; BullMQ would wait for it.
    const down = watchRedis ? this.redisDown() : undefined;
    if (down) throw new ServiceUnavailableError(`${down}${consequence}`);
    const connection = this.runtime().queues.connection;
    let watching = watchRedis;
    let beat: NodeJS.Timeout | undefined;
    let onClose: (() => void) | undefined;
    const lost = new Promise<never>((_, reject) => {
      if (!watching) return;
      onClose = () => reject(new ServiceUnavailableError(`${this.redisDown() ?? 'Redis closed'}${consequence}`));
      connection.once('close', onClose);
      const ping = () => {
        if (!watching) return;
        connection.ping().then(
          () => {
            if (watching) beat = setTimeout(ping, 1000);
          },
          (err: unknown) => reject(this.explain(err, ['redis'], consequence)),
        );
      };
      if (opts.heartbeat) beat = setTimeout(ping, 1000);
    });
    lost.catch(() => undefined);
    try {
      return await settleWithin(Promise.race([p, lost]), ANSWER_WITHIN_MS, () => new NoAnswer());
    } catch (err) {
      if (err instanceof NoAnswer) throw await this.blame(services, consequence);
      throw this.explain(err, services, consequence);
    } finally {
      watching = false;
      clearTimeout(beat);
      if (onClose) connection.off('close', onClose);
    }
  }

  /** An error about reaching a service as exit 3 naming it; any other error as it is. */
  explain(err: unknown, services: Service[], consequence = ''): unknown {
    if (err instanceof ServiceUnavailableError) return err;
    const rt = this.runtime();
    const redis = services.includes('redis') ? redisFailure(err) : undefined;
    if (redis) return new ServiceUnavailableError(`${redisLabel(rt.config)} ${redis}${consequence}`);
    if (services.includes('postgres') && pgConnectionError(err))
      return new ServiceUnavailableError(`${this.postgresLabel()}: ${(err as Error).message}${consequence}`);
    return err;
  }

  /** Which of `services` does not answer now (each asked once more, briefly), as the error to exit with. */
  private async blame(services: Service[], consequence: string): Promise<ServiceUnavailableError> {
    const rt = this.runtime();
    const late = `did not answer within ${ANSWER_WITHIN_MS / 1000} s`;
    const silent = await Promise.all(
      services.map(async (s) => {
        if (s === 'redis') {
          const down = this.redisDown();
          if (down) return down;
          const ping = settleWithin(rt.queues.connection.ping(), PROBE_MS, () => new NoAnswer());
          return ping.then(
            () => undefined,
            () => `${redisLabel(rt.config)} ${late}`,
          );
        }
        const pool = rt.connections.pool(rt.config.history.target, 'history');
        return settleWithin(pool.query('select 1'), PROBE_MS, () => new NoAnswer()).then(
          () => undefined,
          () => `${this.postgresLabel()} ${late}`,
        );
      }),
    );
    const named = silent.filter((s): s is string => s !== undefined);
    if (named.length) return new ServiceUnavailableError(`${named.join('; ')}${consequence}`);
    const labels = services.map((s) => (s === 'redis' ? redisLabel(rt.config) : this.postgresLabel()));
    return new ServiceUnavailableError(
      `no answer within ${ANSWER_WITHIN_MS / 1000} s, though ${labels.join(' and ')} answer now` +
        (consequence || '; try again'),
    );
  }

  /** "Redis (REDIS_URL …) is not reachable (connection reconnecting)" while its connection is not ready. */
  private redisDown(): string | undefined {
    const rt = this.runtime();
    const status = rt.queues.connection.status;
    return status === 'ready' ? undefined : `${redisLabel(rt.config)} is not reachable (connection ${status})`;
  }

  /** "DATABASE_URL: PostgreSQL at postgres://… (target main)": the history database, as messages name it. */
  private postgresLabel(): string {
    const rt = this.runtime();
    const t = rt.connections.target(rt.config.history.target);
    return `${t.urlSource}: PostgreSQL at ${safeUrl(t.url)} (target ${t.name})`;
  }
}

function pgConnectionError(err: unknown): boolean {
  const code = String((err as { code?: unknown } | undefined)?.code ?? '');
  if (PG_CONNECTION_ERRNO.has(code) || code.startsWith('08') || /^57P0[123]$/.test(code)) return true;
  return /Connection terminated|timeout exceeded when trying to connect/i.test(
    (err as Error | undefined)?.message ?? '',
  );
}
