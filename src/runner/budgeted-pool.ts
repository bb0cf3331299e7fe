// A pg.Pool whose sessions keep to connection budgets (connection-budget.ts): each
// session takes a permit of every budget of its pool before it connects and gives it
// back when it has ended. No session is kept open for its own sake (min 0): an idle
// one closes after the idle timeout, or at once when someone waits for its permit.
//
// Runs of jobs check out their sessions inside a RunSessions scope: a run is first
// admitted on its target and its cluster (run slots: half the target's pool, and half the
// cluster's budget less a session for the governor: runSlots), so that every admitted run can
// always get a second session and two runs never wait on each other for one. A run that meets
// `too many clients` (SQLSTATE 53300) waits and connects again, with backoff, until it gets a
// session or is aborted.
import { AsyncLocalStorage } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { coerceError, describeError } from '../core/errors.ts';
import type { Budget } from './connection-budget.ts';

/** The run on whose behalf a checkout happens (set around a job's handler). */
export const runScope = new AsyncLocalStorage<RunSessions>();

/**
 * Told when a session opened for a checkout made in its scope starts to connect, its permits
 * held: a deadline on reaching the server starts then, not while the checkout waits in the
 * budget's line (health readings, target-health.ts).
 */
export const attemptScope = new AsyncLocalStorage<() => void>();

/** Waits before connecting again after `too many clients`: 0.25 s, doubling, at most 30 s. */
export function tooManyClientsDelayMs(attempt: number): number {
  return Math.min(30_000, 250 * 2 ** attempt);
}

/** What RunSessions needs of its run (a RunContext). */
export interface SessionOwner {
  /** The run's abort signal (made when first asked for). */
  readonly signal: AbortSignal;
  /** Rejects once the run is aborted. */
  readonly aborted: Promise<never>;
  /** A line in the run's log. */
  log(message: string): Promise<void>;
}

export class RunSessions {
  private readonly held = new Map<Budget, Promise<void>>();
  private readonly waits = new Set<(reason: unknown) => void>();
  private watching = false;
  private ended = false;

  constructor(readonly owner: SessionOwner) {}

  /** Admission to run slots (a target's, a cluster's), once per run, held until the run ends. */
  admit(slots: Budget): Promise<void> {
    if (this.ended) return Promise.resolve();
    let admitted = this.held.get(slots);
    if (!admitted) {
      // The signal is made only for a wait: most runs find a slot free.
      admitted = slots.acquire(slots.waiting || slots.inUse >= slots.size ? this.owner.signal : undefined);
      admitted.catch(() => this.held.delete(slots));
      this.held.set(slots, admitted);
    }
    return admitted;
  }

  /** Resolves with `p` unless the run is aborted first; what `p` brings after that goes to `discard`. */
  unlessAborted<T>(p: Promise<T>, discard: (value: T) => void): Promise<T> {
    if (!this.watching) {
      this.watching = true;
      this.owner.aborted.catch((reason: unknown) => {
        for (const giveUp of this.waits) giveUp(reason);
      });
    }
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const giveUp = (reason: unknown) => {
        settled = true;
        this.waits.delete(giveUp);
        reject(reason);
      };
      this.waits.add(giveUp);
      p.then(
        (value) => {
          if (settled) return discard(value);
          this.waits.delete(giveUp);
          settled = true;
          resolve(value);
        },
        (err: unknown) => {
          if (settled) return;
          this.waits.delete(giveUp);
          settled = true;
          reject(err);
        },
      );
    });
  }

  /** The run has ended: its slots go back (a checkout left behind then counts as no run's). */
  end(): void {
    this.ended = true;
    for (const [slots, admitted] of this.held)
      admitted.then(
        () => slots.release(),
        () => undefined,
      );
    this.held.clear();
  }
}

/** pg-pool's idle list and removal: the only way to close one idle session on demand. */
interface PoolInternals {
  _idle?: { client: pg.Client }[];
  _remove?(client: pg.Client, callback?: () => void): void;
}

export interface BudgetedPoolOptions {
  connectionString: string;
  application_name: string;
  max: number;
  idleTimeoutMillis: number;
  /** How long one connection attempt may take, once its permits are held. */
  connectTimeoutMs: number;
  /** Every session holds a permit of each, taken in this order. */
  budgets: Budget[];
  /** Run slots (the target's, then the cluster's): a checkout inside a RunSessions scope is admitted first. */
  runSlots?: Budget[];
}

type ConnectCallback = (
  err: Error | undefined,
  client: pg.PoolClient | undefined,
  done: (release?: Error | boolean) => void,
) => void;

export class BudgetedPool extends pg.Pool {
  private readonly budgets: Budget[];
  private readonly runSlots?: Budget[];

  constructor(opts: BudgetedPoolOptions) {
    const { budgets, connectTimeoutMs } = opts;
    /** A session that holds its permits from before it connects until it has ended. */
    class BudgetedClient extends pg.Client {
      constructor(config: pg.ClientConfig) {
        super({ ...config, connectionTimeoutMillis: connectTimeoutMs });
      }

      override connect(): Promise<pg.Client>;
      override connect(callback: (err: Error) => void): void;
      override connect(callback?: (err: Error) => void): Promise<pg.Client> | undefined {
        const connected = this.connectWithin();
        if (!callback) return connected;
        connected.then(
          () => (callback as (err: Error | null) => void)(null),
          (err: Error) => callback(err),
        );
        return undefined;
      }

      private async connectWithin(): Promise<pg.Client> {
        const held: Budget[] = [];
        let released = false;
        const release = () => {
          if (released) return;
          released = true;
          for (const b of held.reverse()) b.release();
        };
        try {
          for (const b of budgets) {
            await b.acquire();
            held.push(b);
          }
          if ((this as unknown as { _ending?: boolean })._ending) throw new Error('Connection terminated');
          this.once('end', release);
          attemptScope.getStore()?.();
          await super.connect();
          return this;
        } catch (err) {
          release();
          throw err;
        }
      }
    }
    super({
      connectionString: opts.connectionString,
      application_name: opts.application_name,
      max: opts.max,
      min: 0,
      idleTimeoutMillis: opts.idleTimeoutMillis,
      // The wait for a permit is not a connection timeout: that is the session's own (above).
      connectionTimeoutMillis: 0,
      Client: BudgetedClient as unknown as new () => pg.ClientBase,
    });
    this.budgets = budgets;
    this.runSlots = opts.runSlots;
    // A session given back goes idle (pg-pool's release event comes just before): offered
    // to the budgets, which close it at once when someone waits for a permit.
    this.on('release', () => queueMicrotask(() => this.offerIdle()));
  }

  private offerIdle(): void {
    if (this.idleCount) for (const b of this.budgets) b.offerIdle(this);
  }

  closeIdle(ended: () => void): boolean {
    const internals = this as unknown as PoolInternals;
    const item = internals._idle?.[0];
    if (!item || !internals._remove) return false;
    internals._remove(item.client, ended);
    return true;
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<pg.PoolClient> | undefined {
    const run = this.runSlots ? runScope.getStore() : undefined;
    if (!run) {
      if (!callback) return super.connect();
      super.connect(callback);
      return undefined;
    }
    const checkedOut = this.runCheckout(run, this.runSlots!);
    if (!callback) return checkedOut;
    checkedOut.then(
      (client) => callback(undefined, client, client.release),
      (err: Error) => callback(err, undefined, () => undefined),
    );
    return undefined;
  }

  private async runCheckout(run: RunSessions, slots: Budget[]): Promise<pg.PoolClient> {
    for (const s of slots) await run.admit(s);
    for (let attempt = 0; ; attempt++) {
      try {
        return await run.unlessAborted(super.connect(), (client) => client.release());
      } catch (err) {
        if ((err as { code?: unknown }).code !== '53300') throw err;
        const delayMs = tooManyClientsDelayMs(attempt);
        const why = describeError(coerceError(err));
        void run.owner
          .log(`${why}: waiting for a session, connecting again in ${delayMs / 1000} s`)
          .catch(() => undefined);
        await sleep(delayMs, undefined, { signal: run.owner.signal });
      }
    }
  }

  override end(): Promise<void>;
  override end(callback: () => void): void;
  override end(callback?: () => void): Promise<void> | undefined {
    for (const b of this.budgets) b.withdraw(this);
    if (!callback) return super.end();
    super.end(callback);
    return undefined;
  }
}

/** Closes a pool's idle sessions now (a run the governor holds gives back what it left idle). */
export function closeIdleSessions(pool: pg.Pool): void {
  if (pool instanceof BudgetedPool) while (pool.closeIdle(() => undefined));
}
