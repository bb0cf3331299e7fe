// The connection budget of one process on one PostgreSQL cluster: a counting
// semaphore over sessions. Every session a pool opens takes a permit before it
// connects and gives it back once it has ended, so this process never holds more
// sessions on the cluster than its budget; work that finds the budget spent waits
// in line (first come, first served), and idle sessions are closed to make room.

/** A pool that can close one of its idle sessions to free a permit. */
export interface IdleSessions {
  /** Starts closing the oldest idle session and calls `ended` once it is gone; false when none is idle. */
  closeIdle(ended: () => void): boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (reason: unknown) => void;
}

export class Budget {
  private used = 0;
  private highest = 0;
  private closing = 0;
  private readonly waiters: Waiter[] = [];
  /** Pools that may have idle sessions (those found without any are dropped). */
  private readonly idle = new Set<IdleSessions>();

  constructor(
    /** What it limits, for messages: "sessions on db1:5432". */
    readonly name: string,
    readonly size: number,
  ) {}

  /** Permits held now. */
  get inUse(): number {
    return this.used;
  }

  /** The most permits held at once since start. */
  get peak(): number {
    return this.highest;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** A pool that has an idle session now: it may be asked to close it when someone waits. */
  offerIdle(pool: IdleSessions): void {
    this.idle.add(pool);
    if (this.waiters.length) this.pump();
  }

  /** A pool that is closing: it has nothing to offer any more. */
  withdraw(pool: IdleSessions): void {
    this.idle.delete(pool);
  }

  /**
   * Takes a permit, waiting in line while none is free; `signal` gives up the wait.
   * `first` puts the wait at the head of the line (work that already holds permits).
   */
  acquire(signal?: AbortSignal, first = false): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!this.waiters.length && this.used < this.size) {
      this.take();
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject,
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (first) this.waiters.unshift(waiter);
      else this.waiters.push(waiter);
      this.pump();
    });
  }

  release(): void {
    this.used--;
    this.pump();
  }

  private take(): void {
    this.used++;
    if (this.used > this.highest) this.highest = this.used;
  }

  /** Hands free permits to the line, then closes idle sessions for those still waiting. */
  pump(): void {
    while (this.waiters.length && this.used < this.size) {
      this.take();
      this.waiters.shift()!.resolve();
    }
    let short = this.waiters.length - this.closing;
    for (const pool of this.idle) {
      if (short <= 0) break;
      // A pool keeps offering until it has no idle session left.
      while (short > 0) {
        const started = pool.closeIdle(() => {
          this.closing--;
          this.pump();
        });
        if (!started) {
          this.idle.delete(pool);
          break;
        }
        this.closing++;
        short--;
      }
    }
  }
}
