// Redis and PostgreSQL connections for one process. Pools are created lazily per
// target and closed in reverse order of creation on shutdown.
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis, Cluster } from 'ioredis';
import pg from 'pg';
import type { Config, RedisConfig, TargetConfig } from '../core/config.ts';
import { PermanentJobError } from '../core/errors.ts';

export type RedisClient = Redis | Cluster;

/** How long one command on a bounded connection may go unanswered before it is given up. */
export const REDIS_COMMAND_TIMEOUT_MS = 2000;

/**
 * patient: BullMQ workers' connections (blocking commands need maxRetriesPerRequest null). A command
 * waits through an outage and runs when Redis is back.
 * bounded: what answers someone (the API, Bull Board, /metrics, alerts, one-shot commands). A command
 * is refused at once while the connection is down (no offline queue), is given up after
 * REDIS_COMMAND_TIMEOUT_MS, and is never sent again after a reconnect. A command given up on a Redis
 * that is only frozen can still run when it thaws: adds are therefore gated by time (add-deadline.ts).
 */
export type RedisMode = 'patient' | 'bounded';

/** A Redis connection for BullMQ: standalone, Sentinel or Cluster, as configured. */
export function createRedis(
  cfg: RedisConfig,
  opts: { name?: string; lazyConnect?: boolean; mode?: RedisMode } = {},
): RedisClient {
  const common = {
    connectionName: opts.name,
    lazyConnect: opts.lazyConnect,
    ...(opts.mode === 'bounded'
      ? {
          maxRetriesPerRequest: 0,
          enableOfflineQueue: false,
          commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
          autoResendUnfulfilledCommands: false,
        }
      : { maxRetriesPerRequest: null }),
  } as const;
  const u = new URL(cfg.url);
  const auth = {
    username: decodeURIComponent(u.username) || undefined,
    password: decodeURIComponent(u.password) || undefined,
  };
  if (cfg.cluster) {
    return new Cluster(cfg.cluster, {
      ...common,
      redisOptions: { ...common, ...auth, tls: u.protocol === 'rediss:' ? {} : undefined },
    });
  }
  if (cfg.sentinels) {
    return new Redis({
      ...common,
      ...auth,
      sentinels: cfg.sentinels,
      name: cfg.sentinelName,
      db: Number(u.pathname.slice(1) || 0),
    });
  }
  return new Redis(cfg.url, common);
}

export class Connections {
  private pools = new Map<string, pg.Pool>();
  private redisClients: RedisClient[] = [];

  constructor(readonly config: Config) {}

  target(name: string): TargetConfig {
    const t = this.config.targets.get(name);
    if (!t)
      throw new PermanentJobError(
        `target: unknown target "${name}" (known: ${[...this.config.targets.keys()].join(', ')})`,
        'UNKNOWN_TARGET',
      );
    return t;
  }

  /** The pool for a target; `purpose` keeps separate pools for separate uses (run history). */
  pool(targetName: string, purpose = 'jobs'): pg.Pool {
    const key = `${targetName}/${purpose}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const t = this.target(targetName);
      pool = new pg.Pool({
        connectionString: t.url,
        max: t.poolSize,
        // One session stays open between runs: a backend started after the jobs' own DDL
        // rebuilds its catalog caches, and at every hourly run that showed in the
        // application's insert latency (docs/benchmarks.md, live impact).
        min: 1,
        application_name: purpose === 'jobs' ? 'pgmaint' : `pgmaint/${purpose}`,
        connectionTimeoutMillis: 10_000,
      });
      // An idle client that loses its server must not crash the process.
      pool.on('error', () => undefined);
      // Nor may a checked-out client that sits idle (an advisory lock held while pg_dump
      // runs) when its server goes away: its next query reports the error, and the pool
      // discards it on release.
      pool.on('connect', (client) => client.on('error', () => undefined));
      this.pools.set(key, pool);
    }
    return pool;
  }

  redis(name?: string, mode: RedisMode = 'patient'): RedisClient {
    const client = createRedis(this.config.redis, { name, mode });
    client.on('error', () => undefined); // reconnects by itself; readiness reports it
    this.redisClients.push(client);
    return client;
  }

  async close(): Promise<void> {
    for (const pool of [...this.pools.values()].reverse()) await pool.end().catch(() => undefined);
    this.pools.clear();
    for (const client of this.redisClients.reverse()) {
      // QUIT on a client that never connected would wait for a connection forever, and on a
      // frozen Redis for an answer forever: it gets a second, then the socket is closed.
      if (client.status === 'ready') await Promise.race([client.quit().catch(() => undefined), sleep(1000)]);
      client.disconnect();
    }
    this.redisClients = [];
  }
}
