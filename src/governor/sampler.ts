// One sampler per target in a worker process, shared by its runs: every checkEveryMs
// while a governed run is active there it reads, on one session of its own
// ("pgmaint/governor"): a timed `select 1` against its rolling quiet baseline, the
// active sessions and lock waiters that are not ours, each standby's replay position,
// and the optional custom statement. A standby's lag is what pg_stat_replication
// says (replay_lag) or, when more, how long its replay position has stood still while WAL
// waits beyond it: replay_lag stops growing (or stays NULL) while replay is paused.
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import type { GovernorPolicy } from '../core/governor-policy.ts';
import type { Logger } from '../core/logger.ts';
import type { Reading } from './judge.ts';

// Sessions of pgmaint (its pool, runs, pg_dump, history, this sampler) and pg_repack's
// are ours; lock waiters that our sessions block are the unit's own doing, not load.
const SIGNALS_SQL = `
select
  (select count(*) from pg_stat_activity
    where backend_type = 'client backend' and state = 'active' and pid <> pg_backend_pid()
      and coalesce(application_name, '') not like 'pgmaint%' and coalesce(application_name, '') <> 'pg_repack')::int
    as active,
  (select count(*) from pg_stat_activity a
    where a.backend_type = 'client backend' and a.wait_event_type = 'Lock' and a.pid <> pg_backend_pid()
      and coalesce(a.application_name, '') not like 'pgmaint%'
      and not exists (select 1 from pg_stat_activity b where b.pid = any(pg_blocking_pids(a.pid))
                       and (b.application_name like 'pgmaint%' or b.application_name = 'pg_repack')))::int
    as lock_waits,
  (select count(*) from pg_stat_activity where backend_type = 'client backend' and state is null)::int as hidden,
  coalesce((select json_agg(json_build_object(
      'name', coalesce(nullif(application_name, ''), client_addr::text, pid::text),
      'addr', coalesce(client_addr::text, 'local'),
      'replayLsn', replay_lsn::text,
      'replayLag', extract(epoch from replay_lag)::float8,
      'behind', case when pg_is_in_recovery() then null
                     else pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 end))
    from pg_stat_replication
   where replay_lsn is not null and state in ('streaming', 'catchup')
     and coalesce(application_name, '') not like 'pgmaint%'), '[]') as standbys`;

interface StandbyRow {
  name: string;
  addr: string;
  replayLsn: string;
  replayLag: number | null;
  behind: number | null;
}

/** How many probes the quiet baseline and the current figure are drawn from. */
const BASELINE_SAMPLES = 120;
const RECENT_PROBES = 3;
/** No statement of the sampler may take longer (a stuck target must not stall it). */
const SAMPLE_TIMEOUT_MS = 5000;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : null;
};

export class TargetSampler {
  latest?: Reading;
  /** Runs on this target that are active, and those of them held now (then the probe is quiet of us). */
  private busy = 0;
  private held = 0;
  private readonly recent: number[] = [];
  private readonly quiet: number[] = [];
  private readonly all: number[] = [];
  /** Per standby: its replay position and since when it stood still with WAL beyond it. */
  private readonly stuck = new Map<string, { lsn: string; since: number | null }>();
  private readonly listeners = new Set<(r: Reading) => void>();
  private client?: pg.PoolClient;
  private running = false;
  private wake?: () => void;
  private loop?: Promise<void>;
  private warned = new Set<string>();

  constructor(
    readonly target: string,
    private readonly pool: pg.Pool,
    private readonly policy: GovernorPolicy,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.running || !this.policy.enabled) return;
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
    this.client?.release();
    this.client = undefined;
  }

  /** A run becomes active (+1) or ends (-1): the sampler reads at its busy pace while any is. */
  setBusy(delta: number): void {
    this.busy = Math.max(0, this.busy + delta);
    if (delta > 0) this.wake?.();
  }

  /** A run starts (+1) or stops (-1) waiting: probes taken while every run waits are quiet ones. */
  setHeld(delta: number): void {
    this.held = Math.max(0, this.held + delta);
  }

  /** Called with every reading; returns the unsubscribe. */
  subscribe(fn: (r: Reading) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** A reading no older than `maxAgeMs`, reading now if need be; undefined when the sampler is off. */
  async fresh(maxAgeMs: number, signal?: AbortSignal): Promise<Reading | undefined> {
    if (!this.running) return undefined;
    if (this.latest && Date.now() - this.latest.at <= maxAgeMs) return this.latest;
    const next = new Promise<Reading>((resolve) => {
      const off = this.subscribe((r) => {
        off();
        resolve(r);
      });
    });
    this.wake?.();
    const aborted = signal
      ? new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
      : undefined;
    aborted?.catch(() => undefined);
    return aborted ? Promise.race([next, aborted]) : next;
  }

  private async run(): Promise<void> {
    while (this.running) {
      if (!this.busy && !this.listeners.size) {
        // No governed run here: the sampler reads nothing and gives its session back, so an
        // idle worker holds none on a fleet of targets (the pool closes it after its idle timeout).
        this.client?.release();
        this.client = undefined;
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      const reading = await this.sample();
      this.latest = reading;
      for (const fn of [...this.listeners]) fn(reading);
      const pause = this.policy.checkEveryMs;
      const woken = new Promise<void>((resolve) => (this.wake = resolve));
      await Promise.race([sleep(pause, undefined, { ref: false }), woken]);
      this.wake = undefined;
    }
  }

  private async sample(): Promise<Reading> {
    const at = Date.now();
    try {
      if (!this.client) {
        this.client = await this.connect();
        await this.client.query(`set statement_timeout = ${SAMPLE_TIMEOUT_MS}`);
      }
      const client = this.client;
      const t0 = performance.now();
      await client.query('select 1');
      const probe = performance.now() - t0;
      const { rows } = await client.query<{
        active: number;
        lock_waits: number;
        hidden: number;
        standbys: StandbyRow[];
      }>(SIGNALS_SQL);
      const row = rows[0]!;
      if (row.hidden > 0)
        this.warnOnce(
          'hidden',
          `governor on ${this.target}: ${row.hidden} sessions of other roles are not visible to this role; grant it ` +
            'pg_monitor so active sessions and lock waits count them (docs/governor.md)',
        );
      return {
        at,
        ...this.probe(probe),
        active: row.active,
        lockWaits: row.lock_waits,
        standbys: this.standbys(row.standbys, at),
        ...(await this.custom(client)),
      };
    } catch (err) {
      // The session is dropped and opened again at the next reading.
      this.client?.release(err as Error);
      this.client = undefined;
      const error = (err as Error).message;
      this.warnOnce(`error:${error}`, `governor on ${this.target}: reading the signals failed: ${error}`);
      return { at, probeMs: null, baselineMs: null, active: null, lockWaits: null, standbys: [], custom: null, error };
    }
  }

  /**
   * A session of its own, waited for at most SAMPLE_TIMEOUT_MS in the budget's line: the runs that
   * wait for this reading may hold the rest of the cluster's budget (a budget of 2, or a run with more
   * than its two sessions), and a reading that never came would hold them for good. Without one the
   * reading is an error, which holds no run (judge.ts); a session that comes later goes back idle.
   */
  private connect(): Promise<pg.PoolClient> {
    return new Promise<pg.PoolClient>((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        reject(
          new Error(
            `no session free within ${SAMPLE_TIMEOUT_MS / 1000} s: the connection budget of its cluster is held by ` +
              'runs (connections.budget, docs/fleet.md)',
          ),
        );
      }, SAMPLE_TIMEOUT_MS);
      this.pool.connect().then(
        (client) => {
          clearTimeout(timer);
          if (late) client.release();
          else resolve(client);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private probe(ms: number): { probeMs: number | null; baselineMs: number | null } {
    const push = (xs: number[], v: number, max: number) => {
      xs.push(v);
      if (xs.length > max) xs.shift();
    };
    push(this.recent, ms, RECENT_PROBES);
    push(this.all, ms, BASELINE_SAMPLES);
    // Quiet: no run of ours works on the target right now (none active, or all held).
    if (this.held >= this.busy) push(this.quiet, ms, BASELINE_SAMPLES);
    const sorted = [...this.all].sort((a, b) => a - b);
    const baseline = this.quiet.length >= 5 ? median(this.quiet) : (sorted[Math.floor(sorted.length / 4)] ?? null);
    return { probeMs: median(this.recent), baselineMs: baseline };
  }

  private standbys(rows: StandbyRow[], now: number): Reading['standbys'] {
    const seen = new Set<string>();
    const out = rows.map((s) => {
      const key = `${s.name}@${s.addr}`;
      seen.add(key);
      const behind = s.behind ?? 0;
      let entry = this.stuck.get(key);
      if (behind <= 0) entry = { lsn: s.replayLsn, since: null };
      else if (!entry || entry.lsn !== s.replayLsn || entry.since === null) entry = { lsn: s.replayLsn, since: now };
      this.stuck.set(key, entry);
      const still = entry.since === null ? 0 : (now - entry.since) / 1000;
      return { name: s.name, lagSeconds: Math.max(s.replayLag ?? 0, still), behindBytes: behind };
    });
    for (const key of this.stuck.keys()) if (!seen.has(key)) this.stuck.delete(key);
    return out;
  }

  /** The custom statement's number, read only and within the sampler's time limit; or why there is none. */
  private async custom(client: pg.PoolClient): Promise<Pick<Reading, 'custom' | 'customError'>> {
    const sql = this.policy.customSql;
    if (!sql) return { custom: null };
    try {
      await client.query('begin transaction read only');
      const { rows, fields } = await client.query(sql);
      await client.query('commit');
      const raw: unknown = rows[0] && fields[0] ? rows[0][fields[0].name] : undefined;
      // NULL, a boolean or an empty string is no number (Number() would make them 0 or 1).
      const value =
        typeof raw === 'number' || (typeof raw === 'string' && raw.trim() !== '') ? Number(raw) : Number.NaN;
      if (!Number.isFinite(value))
        throw new Error(
          `it returned ${raw === undefined ? 'no row' : raw === null ? 'NULL' : JSON.stringify(raw)}, not a number ` +
            '(one row, one numeric column)',
        );
      return { custom: value };
    } catch (err) {
      await client.query('rollback').catch(() => undefined);
      const why = (err as Error).message;
      this.warnOnce(`custom:${why}`, `governor on ${this.target}: customSql failed: ${why}`);
      return { custom: null, customError: why };
    }
  }

  private warnOnce(key: string, message: string): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.logger.warn({ target: this.target }, message);
  }
}
