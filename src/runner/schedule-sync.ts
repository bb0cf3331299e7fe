// The schedule sync: the set of job schedulers written into Redis once per deployment.
// Every process (server, workers) calls it at start; what makes that cheap at 1,000
// targets (14,000 schedulers):
// - the set is keyed by a digest of everything written (ids, crons, zones, offsets,
//   payloads, job options, global concurrency); Redis keeps the digest of the last set
//   written in full, and an unchanged set (with the schedulers still there, counted per
//   queue) is a no-op;
// - one process writes, under a lock with an expiry it renews while it writes; the
//   others wait for it and then find the set in sync (or, with another configuration,
//   write theirs: the last one started wins, as before);
// - the writes go many at a time on one connection (pipelined), not one round trip each.
import { createHash, randomUUID } from 'node:crypto';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { JobsOptions } from 'bullmq';
import type { SpreadRepeatOptions } from '../core/cron.ts';
import type { Logger } from '../core/logger.ts';
import type { RedisClient } from './connections.ts';
import type { JobData, JobQueue, Queues } from './queues.ts';

/** One scheduler as it is written: its queue and id, when it fires, and the job it adds. */
export interface SchedulerWrite {
  queue: string;
  id: string;
  repeat: SpreadRepeatOptions;
  template: { name: string; data: JobData; opts: JobsOptions };
}

export interface QueueLimit {
  queue: string;
  /** Runs at once across the deployment; undefined: none. */
  globalConcurrency?: number;
}

export interface SyncResult {
  /** Ids written by this process (none when the set was in sync already). */
  upserted: string[];
  /** "queue/id" of schedulers removed by this process. */
  removed: string[];
  /** True when Redis held this set already (written earlier, or by another process just now). */
  unchanged: boolean;
}

/** The lock's lifetime; the holder renews it every third of it while it writes. */
const LOCK_TTL_MS = 30_000;
/** How often a process that waits for another's sync looks again. */
const WAIT_POLL_MS = 200;
/** Scheduler writes in flight at once on the connection. */
const IN_FLIGHT = 64;

// Deletes the lock only if this process still holds it; renews it likewise.
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
const RENEW =
  `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) ` + `else return 0 end`;

/** The digest of a set: the same set, in any order, from any process, gives the same digest. */
export function scheduleSetDigest(writes: readonly SchedulerWrite[], limits: readonly QueueLimit[]): string {
  const sorted = [...writes].sort((a, b) => (a.queue + a.id < b.queue + b.id ? -1 : 1));
  const limitsSorted = [...limits].sort((a, b) => (a.queue < b.queue ? -1 : 1));
  return createHash('sha256')
    .update(JSON.stringify({ v: 1, schedulers: sorted, limits: limitsSorted }))
    .digest('hex');
}

export async function syncSchedules(
  queues: Queues,
  writes: readonly SchedulerWrite[],
  limits: readonly QueueLimit[],
  logger: Logger,
): Promise<SyncResult> {
  // A bounded connection sends nothing before it is ready: BullMQ's own calls wait for that, ours too.
  await clusterReady(queues.connection);
  await queues.get(limits[0]?.queue ?? writes[0]!.queue).waitUntilReady();
  const redis = queues.connection;
  const prefix = queues.config.redis.prefix;
  const stateKey = `${prefix}:schedule-sync`;
  const lockKey = `${prefix}:schedule-sync:lock`;
  const digest = scheduleSetDigest(writes, limits);
  const wantedPerQueue = new Map<string, number>(limits.map((l) => [l.queue, 0]));
  for (const w of writes) wantedPerQueue.set(w.queue, (wantedPerQueue.get(w.queue) ?? 0) + 1);

  // In sync: the digest of the last full sync is ours, and each queue holds as many schedulers
  // as we want (one deleted behind our back makes it out of sync; the watchdog repairs the rest).
  const inSync = async (): Promise<boolean> => {
    const [held, ...counts] = await Promise.all([
      redis.hget(stateKey, 'digest'),
      ...[...wantedPerQueue.keys()].map((q) => redis.zcard(queues.get(q).keys.repeat!)),
    ]);
    return held === digest && [...wantedPerQueue.values()].every((n, i) => counts[i] === n);
  };
  const unchanged = (waitedMs: number): SyncResult => {
    logger.info({ schedules: writes.length, digest: digest.slice(0, 12), waitedMs }, 'schedules synced (unchanged)');
    return { upserted: [], removed: [], unchanged: true };
  };

  const started = Date.now();
  for (;;) {
    if (await inSync()) return unchanged(Date.now() - started);
    const token = `${os.hostname()}:${process.pid}:${randomUUID()}`;
    if ((await redis.set(lockKey, token, 'PX', LOCK_TTL_MS, 'NX')) !== 'OK') {
      // Another process writes: wait until its lock is gone, then look again.
      while (await redis.exists(lockKey)) await sleep(WAIT_POLL_MS);
      continue;
    }
    const renew = setInterval(() => {
      redis.eval(RENEW, 1, lockKey, token, String(LOCK_TTL_MS)).catch(() => undefined);
    }, LOCK_TTL_MS / 3);
    renew.unref();
    try {
      // It may have finished between our look and our lock.
      if (await inSync()) return unchanged(Date.now() - started);
      const t0 = Date.now();
      const removed = await removeUnwanted(redis, queues, writes, [...wantedPerQueue.keys()]);
      await Promise.all(
        limits.map(({ queue, globalConcurrency }) =>
          globalConcurrency === undefined
            ? queues.get(queue).removeGlobalConcurrency()
            : queues.get(queue).setGlobalConcurrency(globalConcurrency),
        ),
      );
      await inBatches(writes, (w) => queues.get(w.queue).upsertJobScheduler(w.id, w.repeat, w.template));
      await redis.hset(stateKey, {
        digest,
        syncedAt: new Date().toISOString(),
        syncedBy: token.replace(/:[^:]*$/, ''),
      });
      logger.info(
        { upserted: writes.length, removed, ms: Date.now() - t0, digest: digest.slice(0, 12) },
        'schedules synced',
      );
      return { upserted: writes.map((w) => w.id), removed, unchanged: false };
    } finally {
      clearInterval(renew);
      await redis.eval(RELEASE, 1, lockKey, token).catch(() => undefined);
    }
  }
}

/**
 * A cluster client says `connect` before it is `ready`, and BullMQ takes `connect` for ready: its
 * first INFO then fails (no offline queue) and leaves the queue unusable. Waits for `ready` (or
 * `end`, or 10 s: then BullMQ's call reports the failure, naming Redis, as before).
 */
async function clusterReady(client: RedisClient): Promise<void> {
  if (!('nodes' in client) || client.status === 'ready') return;
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      client.off('ready', done);
      client.off('end', done);
      resolve();
    };
    const timer = setTimeout(done, 10_000);
    client.once('ready', done);
    client.once('end', done);
  });
}

/** Removes the schedulers of every queue whose id is not wanted in that queue; reads only their ids. */
async function removeUnwanted(
  redis: RedisClient,
  queues: Queues,
  writes: readonly SchedulerWrite[],
  queueNames: readonly string[],
): Promise<string[]> {
  const wanted = new Set(writes.map((w) => `${w.queue}/${w.id}`));
  const stale: { queue: JobQueue; id: string }[] = [];
  for (const name of queueNames) {
    const queue = queues.get(name);
    for (const id of await redis.zrange(queue.keys.repeat!, '0', '-1'))
      if (!wanted.has(`${name}/${id}`)) stale.push({ queue, id });
  }
  await inBatches(stale, ({ queue, id }) => queue.removeJobScheduler(id));
  return stale.map(({ queue, id }) => `${queue.name}/${id}`);
}

/** Runs `fn` over `items` with IN_FLIGHT calls outstanding at a time: their commands share the connection's pipe. */
async function inBatches<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, items.length) }, lane));
}
