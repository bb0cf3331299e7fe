// Redis and PostgreSQL connections for one process. Pools are created lazily per
// target and closed in reverse order of creation on shutdown.
import { Redis, Cluster } from 'ioredis';
import pg from 'pg';
import type { Config, RedisConfig, TargetConfig } from '../core/config.ts';
import { PermanentJobError } from '../core/errors.ts';

export type RedisClient = Redis | Cluster;

/** A Redis connection for BullMQ: standalone, Sentinel or Cluster, as configured. */
export function createRedis(cfg: RedisConfig, opts: { name?: string; lazyConnect?: boolean } = {}): RedisClient {
  const common = { maxRetriesPerRequest: null, connectionName: opts.name, lazyConnect: opts.lazyConnect } as const;
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

  redis(name?: string): RedisClient {
    const client = createRedis(this.config.redis, { name });
    client.on('error', () => undefined); // reconnects by itself; readiness reports it
    this.redisClients.push(client);
    return client;
  }

  async close(): Promise<void> {
    for (const pool of [...this.pools.values()].reverse()) await pool.end().catch(() => undefined);
    this.pools.clear();
    for (const client of this.redisClients.reverse()) {
      // QUIT on a client that never connected would wait for a connection forever.
      if (client.status === 'ready') await client.quit().catch(() => client.disconnect());
      else client.disconnect();
    }
    this.redisClients = [];
  }
}
