// The final 100 % of runs that reported no progress of their own, written in batches.
import type { RedisClient } from './connections.ts';

// Sets progress to 100 on each job hash that still exists (a finished job may already
// be removed: a bare HSET would leave a stray hash behind).
const SET_PROGRESS_DONE = `for _, key in ipairs(KEYS) do
  if redis.call('exists', key) == 1 then redis.call('hset', key, 'progress', '100') end
end
return #KEYS`;

/**
 * The 100 % of runs that reported no progress, written for many jobs in one command
 * every `flushMs` (after BullMQ's completion): a command per run cost the runner a
 * tenth of its throughput. A run that reported progress gets its 100 % at once, as the
 * event its followers wait for. Every job hash of a queue prefix sits in one Cluster slot.
 */
export class ProgressDone {
  private keys: string[] = [];
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly redis: RedisClient,
    private readonly onError: (err: unknown) => void,
    private readonly flushMs = 20,
  ) {}

  add(jobKey: string): void {
    this.keys.push(jobKey);
    this.timer ??= setTimeout(() => void this.flush(), this.flushMs).unref();
  }

  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const keys = this.keys;
    this.keys = [];
    if (!keys.length) return Promise.resolve();
    return this.redis.eval(SET_PROGRESS_DONE, keys.length, ...keys).then(
      () => undefined,
      (err) => this.onError(err),
    );
  }
}
