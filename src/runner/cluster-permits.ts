// Permits per PostgreSQL cluster for heavy jobs, shared by every worker process of the
// deployment: a Redis sorted set per cluster (core/cluster.ts names it), one member per
// running heavy job, scored with when its lease ends by Redis's clock. A run takes a
// permit before it starts and gives it back when it ends (succeeded, failed, aborted);
// while it runs its worker renews the lease. A worker that dies stops renewing, and
// its permit is free again once the lease runs out (worker.lockDurationMs, as BullMQ's
// own job lock), so a SIGKILL never blocks a cluster for good.
import type pg from 'pg';
import { closeIdleSessions } from './budgeted-pool.ts';
import type { RedisClient } from './connections.ts';
import type { RunHoldings } from './governor-port.ts';

// KEYS[1] the cluster's set; ARGV: holder, limit, lease ms. Expired leases go first.
// 1: taken (or renewed, for a holder that has it); 0 and the holders: all permits are held.
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return {1}
end
return {0, redis.call('ZRANGE', KEYS[1], 0, -1)}
`;

export interface Lease {
  /** Gives the permit back; stops renewing. */
  release(): Promise<void>;
}

export type TakeOutcome = { lease: Lease } | { lease?: undefined; heldBy: string[] };

export class ClusterPermits {
  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
    /** Heavy jobs at once on one cluster. */
    private readonly limit: number,
    /** How long a permit outlives its holder's last renewal. */
    private readonly leaseMs: number,
    private readonly onLost: (cluster: string, holder: string) => void,
  ) {}

  private key(cluster: string): string {
    return `${this.prefix}:cluster-permits:${cluster}`;
  }

  private async tryTake(cluster: string, holder: string): Promise<[number, string[]?]> {
    return (await this.redis.eval(TAKE, 1, this.key(cluster), holder, String(this.limit), String(this.leaseMs))) as [
      number,
      string[]?,
    ];
  }

  /** A permit of `cluster` for `holder`, renewed until released; or who holds them all. */
  async take(cluster: string, holder: string): Promise<TakeOutcome> {
    const [taken, heldBy] = await this.tryTake(cluster, holder);
    if (!taken) return { heldBy: heldBy ?? [] };
    let lost = false;
    const renew = setInterval(() => {
      // Renewing is taking again: it extends a lease still held, and takes a free permit back
      // after a stall that let the lease run out.
      this.tryTake(cluster, holder).then(
        ([ok]) => {
          if (!ok && !lost) this.onLost(cluster, holder);
          lost = !ok;
        },
        () => undefined,
      );
    }, this.leaseMs / 3);
    renew.unref();
    return {
      lease: {
        release: async () => {
          clearInterval(renew);
          await this.redis.zrem(this.key(cluster), holder);
        },
      },
    };
  }
}

/**
 * A run's permit of its cluster: taken before the run starts, given back while the
 * governor holds the run between units (another heavy job may run meanwhile), taken again
 * before its next unit, and given back for good when the run ends.
 */
export class RunPermit {
  private lease?: Lease;

  constructor(
    private readonly permits: ClusterPermits,
    readonly cluster: string,
    private readonly holder: string,
    private readonly worker: { heavyJobsPerCluster: number },
  ) {}

  async release(): Promise<void> {
    const lease = this.lease;
    this.lease = undefined;
    await lease?.release();
  }

  /** Takes the permit: undefined once held, else why the run waits for it (who holds them). */
  async retake(): Promise<string | undefined> {
    if (this.lease) return undefined;
    const taken = await this.permits.take(this.cluster, this.holder);
    if (taken.lease) {
      this.lease = taken.lease;
      return undefined;
    }
    const holders = taken.heldBy.map((h) => h.replace(/:[^:]*$/, '')).join(', ');
    return (
      `waiting for a heavy-job permit of cluster ${this.cluster} (${this.worker.heavyJobsPerCluster} at once; ` +
      `held by ${holders})`
    );
  }
}

/** What a run held between units gives back (its permit, the sessions it left idle) and takes again. */
export const runHoldings = (permit: RunPermit | undefined, pool: pg.Pool): RunHoldings => ({
  release: async () => {
    await permit?.release();
    closeIdleSessions(pool);
  },
  retake: async () => permit?.retake(),
});
