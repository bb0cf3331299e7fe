// One background sampler per server: a health reading every 30 s, and on demand, kept in
// memory for /metrics, /api/status and the alert monitor, so a request never reads the
// fleet (at 1,000 targets a reading takes seconds; serving the snapshot takes none). Each
// snapshot is also written to Redis under the deployment's prefix, so any process
// (`pgmaint status` on the database host) shows it instead of reading every target itself.
// Whatever serves a snapshot says how old it is.
import type { Logger } from '../core/logger.ts';
import type { Runtime } from '../runner/runtime.ts';
import type { HealthReader, HealthSnapshot } from './health.ts';

export const SAMPLE_INTERVAL_MS = 30_000;

/** A stored snapshot older than this is not shown: no server has sampled for ten intervals. */
export const STORED_SNAPSHOT_MAX_AGE_MS = 10 * SAMPLE_INTERVAL_MS;

/** Redis forgets a stored snapshot after this (nobody would show it anyway). */
const STORED_TTL_SECONDS = 3600;

/** Bumped when StatusSnapshot changes shape: a process never reads another version's snapshot. */
const STORED_VERSION = 3;

/** The parts of a snapshot the status report shows: what is stored in Redis (not the per-schedule detail). */
export type StatusSnapshot = Pick<
  HealthSnapshot,
  'at' | 'queues' | 'targets' | 'backups' | 'partitions' | 'governor' | 'errors'
>;

export const snapshotKey = (prefix: string) => `${prefix}:health:snapshot`;

/** The snapshot a server's sampler stored, when there is one of this version; `at` says how old it is. */
export async function readStoredSnapshot(rt: Runtime): Promise<StatusSnapshot | undefined> {
  const text = await rt.queues.connection.get(snapshotKey(rt.config.redis.prefix));
  if (!text) return undefined;
  const stored = JSON.parse(text) as { v?: unknown; snapshot?: StatusSnapshot };
  return stored.v === STORED_VERSION ? stored.snapshot : undefined;
}

/** What GET /api/status serves: the server's sampler, or (the direct-mode CLI) a snapshot stored in Redis. */
export interface SnapshotProvider {
  read(): Promise<StatusSnapshot>;
  /** Waits for a new reading, which read() serves from then on (`?fresh=1`). */
  refresh(): Promise<unknown>;
  describeError(err: unknown): string;
  /** The snapshot kept now, without reading: undefined before the first one, or when each answer reads afresh. */
  kept(): StatusSnapshot | undefined;
  /** How often the snapshot is renewed; 0: each answer takes a reading. */
  readonly intervalMs: number;
  /** snapshot: a sampler's; reading: one taken for each answer. */
  readonly source: 'snapshot' | 'reading';
}

/**
 * For `pgmaint status` in direct mode: the snapshot a server stored, when one no older than
 * STORED_SNAPSHOT_MAX_AGE_MS is there (no target is connected to); else `say` is told why and
 * each answer takes a reading here.
 */
export async function storedOrReading(
  rt: Runtime,
  health: HealthReader,
  say: (line: string) => void,
): Promise<SnapshotProvider> {
  const stored = await readStoredSnapshot(rt);
  if (stored && Date.now() - stored.at <= STORED_SNAPSHOT_MAX_AGE_MS) {
    let current: StatusSnapshot = stored;
    return {
      read: async () => current,
      refresh: async () => (current = await health.take()),
      describeError: (err) => health.describeError(err),
      kept: () => current,
      intervalMs: SAMPLE_INTERVAL_MS,
      source: 'snapshot',
    };
  }
  const why = stored
    ? `the health snapshot in Redis is ${Math.round((Date.now() - stored.at) / 60_000)} min old (not sampled since)`
    : 'no server has stored a health snapshot in Redis';
  say(`${why}; reading every target here instead`);
  return new HealthSampler(rt, health, 0);
}

export class HealthSampler implements SnapshotProvider {
  private latest?: HealthSnapshot;
  private reading?: Promise<HealthSnapshot>;
  private timer?: NodeJS.Timeout;
  private running = false;
  private readonly logger: Logger;
  private readonly listeners: ((s: HealthSnapshot) => unknown)[] = [];

  /** intervalMs 0: no snapshot is kept; every read takes a reading (concurrent reads share one). */
  constructor(
    private readonly rt: Runtime,
    private readonly health: HealthReader,
    readonly intervalMs = SAMPLE_INTERVAL_MS,
  ) {
    this.logger = rt.logger;
  }

  /** Samples now, then every intervalMs (counted from the last reading's start, whoever asked for it). */
  start(): void {
    if (this.intervalMs <= 0 || this.running) return;
    this.running = true;
    const tick = async () => {
      if (!this.latest || Date.now() - this.latest.at >= this.intervalMs)
        await this.refresh().catch((err) => this.logger.error({ err }, 'health sample failed'));
      if (!this.running) return;
      const next = (this.latest?.at ?? Date.now()) + this.intervalMs - Date.now();
      this.timer = setTimeout(tick, Math.max(1000, next)).unref();
    };
    void tick();
  }

  stop(): void {
    this.running = false;
    clearTimeout(this.timer);
  }

  /** A new reading now (concurrent callers share it); it becomes the snapshot, here and in Redis. */
  refresh(): Promise<HealthSnapshot> {
    this.reading ??= this.health
      .take(Date.now())
      .then((s) => {
        if (!this.latest || s.at >= this.latest.at) this.latest = s;
        this.store(s);
        for (const listener of this.listeners) listener(s);
        return s;
      })
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }

  /** The snapshot to serve (/metrics, /api/status); before the first one, the first reading. */
  read(): Promise<HealthSnapshot> {
    if (this.intervalMs <= 0 || !this.latest) return this.refresh();
    return Promise.resolve(this.latest);
  }

  /**
   * For the alert monitor: the snapshot while it is younger than the interval, else a new one, so the
   * server reads the fleet once per interval for both. A chosen time (a test judging the future) gets a
   * reading of its own for that time, which is not kept.
   */
  take(now = Date.now()): Promise<HealthSnapshot> {
    if (Math.abs(now - Date.now()) > 1000) return this.health.take(now);
    if (this.intervalMs > 0 && this.latest && now - this.latest.at < this.intervalMs)
      return Promise.resolve(this.latest);
    return this.refresh();
  }

  kept(): HealthSnapshot | undefined {
    return this.intervalMs > 0 ? this.latest : undefined;
  }

  get source(): 'snapshot' | 'reading' {
    return this.intervalMs > 0 ? 'snapshot' : 'reading';
  }

  /** Called with each new snapshot (the server prepares /metrics' text then, not on a scrape). */
  onSample(listener: (s: HealthSnapshot) => unknown): void {
    this.listeners.push(listener);
  }

  describeError(err: unknown): string {
    return this.health.describeError(err);
  }

  private store(s: HealthSnapshot): void {
    const snapshot: StatusSnapshot = {
      at: s.at,
      queues: s.queues,
      targets: s.targets,
      backups: s.backups,
      partitions: s.partitions,
      governor: s.governor,
      errors: s.errors,
    };
    this.rt.queues.connection
      .set(
        snapshotKey(this.rt.config.redis.prefix),
        JSON.stringify({ v: STORED_VERSION, snapshot }),
        'EX',
        STORED_TTL_SECONDS,
      )
      .catch((err: unknown) =>
        this.logger.warn({ err: this.describeError(err) }, 'health snapshot not stored in Redis'),
      );
  }
}
