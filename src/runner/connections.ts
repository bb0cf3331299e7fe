// Redis and PostgreSQL connections for one process. Pools are created lazily per
// target and purpose and closed in reverse order of creation on shutdown. Every
// pool of a cluster keeps to that cluster's connection budget (connection-budget.ts).
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis, Cluster } from 'ioredis';
import type pg from 'pg';
import { clusterBudget, type Config, type RedisConfig, type TargetConfig } from '../core/config.ts';
import { PermanentJobError } from '../core/errors.ts';
import { waitAtMost } from '../core/wait-at-most.ts';
import { BudgetedPool } from './budgeted-pool.ts';
import { Budget } from './connection-budget.ts';
import { PG_ANSWER_TIMEOUT_MS } from './postgres-failure.ts';

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

/** One process's budgets on one cluster. */
export interface ClusterBudgets {
  /** Every session of the process on the cluster. */
  sessions: Budget;
  /** Sessions of the health readings and /readyz (within `sessions`). */
  readings: Budget;
  /** Runs of jobs holding sessions at once (runSlots): each can always get a second session. */
  runs: Budget;
}

/**
 * Run slots of a cluster's budget: two sessions each, with one session left over for the load
 * governor's samplers. A governed run may hold its two sessions at a gate while it waits for a
 * reading; were every session a run's, no sampler could connect and nothing would move. A
 * budget of 2 has no session to spare: its one run's gates are read by a sampler that gives up
 * waiting for a session (governor/sampler.ts) rather than stall.
 */
export function runSlots(budget: number): number {
  return budget >= 3 ? Math.floor((budget - 1) / 2) : 1;
}

/** How long one connection attempt may take (once the budget let it start). */
const CONNECT_TIMEOUT_MS = 10_000;

export class Connections {
  private pools = new Map<string, BudgetedPool>();
  private budgets = new Map<string, ClusterBudgets>();
  /** Runs holding sessions on a target at once: half its pool, so each can always get a second. */
  private targetRuns = new Map<string, Budget>();
  private probes = new Map<string, Promise<void>>();
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

  /** The budgets of a cluster in this process. */
  cluster(name: string): ClusterBudgets {
    let b = this.budgets.get(name);
    if (!b) {
      const { budget, readings } = clusterBudget(this.config, name);
      b = {
        sessions: new Budget(`sessions on ${name}`, budget),
        readings: new Budget(`reading sessions on ${name}`, readings),
        runs: new Budget(`runs on ${name}`, runSlots(budget)),
      };
      this.budgets.set(name, b);
    }
    return b;
  }

  private targetRunSlots(t: TargetConfig): Budget {
    let slots = this.targetRuns.get(t.name);
    if (!slots) {
      slots = new Budget(`runs on target ${t.name}`, Math.max(1, Math.floor(t.poolSize / 2)));
      this.targetRuns.set(t.name, slots);
    }
    return slots;
  }

  /**
   * The pool for a target; `purpose` keeps separate pools for separate uses: jobs (runs
   * check out inside their RunSessions scope), history (run history writes and reads),
   * monitor (health readings and /readyz, within the cluster's readings share).
   */
  pool(targetName: string, purpose = 'jobs'): pg.Pool {
    const key = `${targetName}/${purpose}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const t = this.target(targetName);
      const b = this.cluster(t.cluster);
      const reading = purpose === 'monitor';
      pool = new BudgetedPool({
        connectionString: t.url,
        application_name: purpose === 'jobs' ? 'pgmaint' : `pgmaint/${purpose}`,
        max: Math.min(reading ? b.readings.size : t.poolSize, b.sessions.size),
        // No session stays open for its own sake: at 1,000 targets one idle session per
        // target and process would be thousands. A run that follows within the idle
        // timeout reuses its predecessor's session; one that follows later starts a fresh
        // backend, which costs the application a little (docs/fleet.md, sizing connections).
        idleTimeoutMillis: this.config.connections.idleTimeoutMs,
        connectTimeoutMs: CONNECT_TIMEOUT_MS,
        budgets: reading ? [b.readings, b.sessions] : [b.sessions],
        runSlots: purpose === 'jobs' ? [this.targetRunSlots(t), b.runs] : undefined,
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

  /**
   * `select 1` on a target, on the readings' share of its cluster (/readyz). A probe still
   * waiting for a session is shared by those who ask meanwhile: probes that give up never
   * pile up behind a busy budget.
   */
  probe(targetName: string): Promise<void> {
    let probe = this.probes.get(targetName);
    if (!probe) {
      // A target that stalls (SIGSTOP, a proxy that stops answering) gives the probe up and keeps no session.
      const query: pg.QueryConfig & { query_timeout?: number } = {
        text: 'select 1',
        query_timeout: PG_ANSWER_TIMEOUT_MS,
      };
      probe = this.pool(targetName, 'monitor')
        .query(query)
        .then(() => undefined)
        .finally(() => this.probes.delete(targetName));
      this.probes.set(targetName, probe);
    }
    return probe;
  }

  /**
   * Ends now the idle sessions of every pool of `purpose`. A health reading calls it when it
   * is done: its next one is an interval away, so keeping a session per cluster open until
   * the idle timeout would only hold it for nothing (at 1,000 targets, always: a reading
   * ends less than an idle timeout before the next starts).
   */
  async releaseIdle(purpose: string): Promise<void> {
    const ended: Promise<void>[] = [];
    for (const [key, pool] of this.pools) {
      if (!key.endsWith(`/${purpose}`)) continue;
      for (;;) {
        let done!: () => void;
        const end = new Promise<void>((resolve) => (done = resolve));
        if (!pool.closeIdle(done)) break;
        ended.push(end);
      }
    }
    // Waits for the servers to end them, so the sessions are gone when the reading is; a
    // stopped server that never answers the goodbye gets the answer timeout, then is let be.
    await Promise.race([Promise.all(ended), sleep(PG_ANSWER_TIMEOUT_MS, undefined, { ref: false })]);
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
      if (client.status === 'ready') await waitAtMost(client.quit(), 1000);
      client.disconnect();
    }
    this.redisClients = [];
  }
}
