// The durable record of every run: one row per attempt in pgmaint.run_history on
// the history target. Redis keeps only a bounded number of finished jobs.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { withTransaction } from '../core/sql.ts';
import { flushSql, MIGRATION } from './history-sql.ts';

export type Outcome = 'running' | 'succeeded' | 'failed' | 'retrying' | 'timed_out' | 'skipped' | 'abandoned';

export interface RunStart {
  queue: string;
  jobId: string;
  job: string;
  target: string;
  payload: unknown;
  trigger: string;
  scheduledFor?: Date;
  attempt: number;
  worker: string;
  /** The job was recovered after its worker was lost (stalled). */
  recovered?: boolean;
}

/** A run-history row; R is the job's result type (jobs export it) when the caller knows the job. */
export interface HistoryRow<R = unknown> {
  id: string;
  run_id: string;
  queue: string;
  job_id: string;
  job: string;
  target: string;
  payload: unknown;
  trigger: string;
  scheduled_for: Date | null;
  attempt: number;
  started_at: Date;
  finished_at: Date | null;
  outcome: Outcome;
  error: string | null;
  /** The failure's stable code (src/core/errors.ts errorCode); null for a run that did not fail, and for rows
   * written before the column existed. */
  error_code: string | null;
  /** The handler's return value, for a succeeded run; null otherwise. */
  result: R | null;
  worker: string | null;
}

export interface JobStatus {
  job: string;
  target: string;
  lastSuccess: Date | null;
  lastOutcome: 'succeeded' | 'failed' | 'timed_out';
  lastFinished: Date | null;
  lastError: string | null;
  /** The stable code of the last final outcome when it failed (null: succeeded, or recorded before codes). */
  lastErrorCode: string | null;
  consecutiveFailures: number;
}

export interface LastRun {
  outcome: Outcome;
  finishedAt: Date;
  error: string | null;
  errorCode: string | null;
}

export interface ScheduleStatus {
  schedule: string;
  lastSuccess: Date | null;
  startLagSeconds: number | null;
}

/** A row as buffered before it is written. */
type Row = Omit<HistoryRow, 'id' | 'worker'> & {
  worker: string;
  /** Re-run of a job whose worker was lost (BullMQ's stalled-job recovery). */
  recovered: boolean;
};

type Finish = Pick<Row, 'run_id' | 'finished_at' | 'outcome' | 'error' | 'error_code' | 'result'>;

export interface HistoryOptions {
  /** How long rows wait to share one write with other runs' rows. */
  flushDelayMs?: number;
  /** Wait for the commit of a run's final row before the job counts as done in BullMQ. */
  synchronous?: boolean;
  onError?: (err: unknown) => void;
  /**
   * Where someone waits for the reads (list, statuses, last runs): a read PostgreSQL does not answer
   * within this is given up, and its session closed (postgres-failure.ts). Unset: reads wait.
   */
  readTimeoutMs?: number;
}

/**
 * Writes rows in batches (group commit): a start row and its finish, when close
 * together, become one row, and concurrent runs share one statement. By default a
 * job does not wait for its row's commit; rows are flushed within flushDelayMs, on
 * failure retried with backoff, and on shutdown written before the pools close.
 * A SIGKILLed process can lose the rows of its last flushDelayMs; `synchronous`
 * closes that window at the cost of a commit per job.
 */
export class RunHistory {
  private ready?: Promise<void>;
  private inserts = new Map<string, Row>();
  private updates = new Map<string, Finish>();
  private flushing?: Promise<void>;
  private next?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private failures = 0;
  private readonly flushDelayMs: number;
  private readonly synchronous: boolean;

  constructor(
    private readonly pool: pg.Pool,
    private readonly opts: HistoryOptions = {},
  ) {
    this.flushDelayMs = opts.flushDelayMs ?? 20;
    this.synchronous = opts.synchronous ?? false;
  }

  /** Creates the table once per process; concurrent starters serialize on an advisory lock. */
  migrate(): Promise<void> {
    this.ready ??= withTransaction(this.pool, async (client) => {
      await client.query(`select pg_advisory_xact_lock(hashtext('pgmaint.run_history'))`);
      await client.query(MIGRATION);
    }).catch((err) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }

  /** Records a started attempt and returns its run id. */
  start(run: RunStart): string {
    const runId = randomUUID();
    this.inserts.set(runId, {
      run_id: runId,
      queue: run.queue,
      job_id: run.jobId,
      job: run.job,
      target: run.target,
      payload: run.payload ?? {},
      trigger: run.trigger,
      scheduled_for: run.scheduledFor ?? null,
      attempt: run.attempt,
      started_at: new Date(),
      finished_at: null,
      outcome: 'running',
      error: null,
      error_code: null,
      result: null,
      worker: run.worker,
      recovered: run.recovered ?? false,
    });
    this.schedule(this.flushDelayMs);
    return runId;
  }

  /** Records the end of an attempt (committed before resolving when synchronous). */
  finish(
    runId: string,
    outcome: Exclude<Outcome, 'running'>,
    detail: { error?: string; errorCode?: string; result?: unknown },
  ): Promise<void> {
    const end: Finish = {
      run_id: runId,
      finished_at: new Date(),
      outcome,
      error: detail.error ?? null,
      error_code: detail.errorCode ?? null,
      result: detail.result ?? null,
    };
    const pendingInsert = this.inserts.get(runId);
    if (pendingInsert) Object.assign(pendingInsert, end);
    else this.updates.set(runId, end);
    if (this.synchronous) return this.flush();
    this.schedule(this.inserts.size + this.updates.size >= 500 ? 0 : this.flushDelayMs);
    return Promise.resolve();
  }

  /** A run that did not start (overlap, missed while down) is recorded in one row. */
  skipped(run: RunStart, reason: string): Promise<void> {
    return this.finish(this.start(run), 'skipped', { result: { skipped: reason } });
  }

  private schedule(delayMs: number): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush().catch((err) => {
        this.opts.onError?.(err);
        // Rows are back in the buffer; try again, backing off up to 30 s.
        this.failures++;
        this.schedule(Math.min(30_000, 250 * 2 ** this.failures));
      });
    }, delayMs);
    this.timer.unref();
  }

  /** Writes everything buffered. Flushes run one at a time, so an update never
   * overtakes the insert of its row; callers arriving during a flush share the next.
   * A failed flush puts its rows back. */
  flush(): Promise<void> {
    if (this.flushing) {
      this.next ??= this.flushing
        .catch(() => undefined)
        .then(() => {
          this.next = undefined;
          return this.flush();
        });
      return this.next;
    }
    if (!this.inserts.size && !this.updates.size) return Promise.resolve();
    const inserts = [...this.inserts.values()];
    const updates = [...this.updates.values()];
    this.inserts = new Map();
    this.updates = new Map();
    this.flushing = (async () => {
      await this.migrate();
      const parts = {
        inserts: inserts.length > 0,
        recovered: inserts.some((r) => r.recovered),
        updates: updates.length > 0,
      };
      // Named per shape, so each connection plans each of the few shapes once.
      const name = `pgmaint-history-${Number(parts.inserts)}${Number(parts.recovered)}${Number(parts.updates)}`;
      await this.pool.query({
        name,
        text: flushSql(parts),
        values: [JSON.stringify(inserts), JSON.stringify(updates)],
      });
      this.failures = 0;
    })()
      .catch((err) => {
        // Newer entries for the same run (a finish that came meanwhile) win.
        for (const r of inserts) {
          const later = this.updates.get(r.run_id);
          this.inserts.set(r.run_id, later ? { ...r, ...later } : r);
          this.updates.delete(r.run_id);
        }
        for (const u of updates) if (!this.updates.has(u.run_id)) this.updates.set(u.run_id, u);
        throw err;
      })
      .finally(() => {
        this.flushing = undefined;
      });
    return this.flushing;
  }

  /** Flushes what is buffered; called on shutdown before the pools close. */
  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (let i = 0; i < 3 && (this.inserts.size || this.updates.size || this.flushing); i++) {
      await this.flush().catch((err) => this.opts.onError?.(err));
    }
  }

  /** A read, given up after readTimeoutMs when set (pg then closes the session it ran on). */
  private async read<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]> {
    // pg reads query_timeout from the query's own config (its types do not list it).
    const query: pg.QueryConfig & { query_timeout?: number } = { text, values, query_timeout: this.opts.readTimeoutMs };
    const { rows } = await this.pool.query<T>(query);
    return rows;
  }

  async list(filter: { job?: string; limit?: number } = {}): Promise<HistoryRow[]> {
    await this.migrate();
    const rows = await this.read<HistoryRow>(
      `select * from pgmaint.run_history where ($1::text is null or job = $1) order by started_at desc, id desc ` +
        `limit $2`,
      [filter.job ?? null, filter.limit ?? 20],
    );
    return rows;
  }

  /**
   * Per job and target: the last success, the last final outcome and how many runs
   * in a row have failed after their last attempt (what /metrics and alerts read).
   */
  async jobStatus(): Promise<JobStatus[]> {
    await this.migrate();
    const rows = await this.read<JobStatus>(
      `with final as (
         select job, target, outcome, started_at, finished_at, error, error_code,
                max(started_at) filter (where outcome = 'succeeded') over (partition by job, target) as
                  last_success_start,
                row_number() over (partition by job, target order by started_at desc, id desc) as rn
           from pgmaint.run_history where outcome in ('succeeded', 'failed', 'timed_out'))
       select job, target,
              max(finished_at) filter (where outcome = 'succeeded') as "lastSuccess",
              max(outcome) filter (where rn = 1) as "lastOutcome",
              max(finished_at) filter (where rn = 1) as "lastFinished",
              max(error) filter (where rn = 1) as "lastError",
              max(error_code) filter (where rn = 1) as "lastErrorCode",
              count(*) filter (where outcome <> 'succeeded' and started_at > coalesce(last_success_start,
                '-infinity'))::int as "consecutiveFailures"
         from final group by job, target order by job, target`,
    );
    return rows;
  }

  /** Per schedule (trigger "schedule:<id>"): the last success and the start lag of its latest run. */
  async scheduleStatus(): Promise<ScheduleStatus[]> {
    await this.migrate();
    const rows = await this.read<ScheduleStatus>(
      `select substr(trigger, 10) as schedule,
              max(finished_at) filter (where outcome = 'succeeded') as "lastSuccess",
              (array_agg(extract(epoch from started_at - scheduled_for)::float8 order by started_at desc) filter
                (where attempt = 1 and scheduled_for is not null))[1] as "startLagSeconds"
         from pgmaint.run_history where trigger like 'schedule:%' group by trigger`,
    );
    return rows;
  }

  /** Each schedule's newest finished run (any outcome, skipped included), by schedule id. */
  async lastScheduledRuns(): Promise<Map<string, LastRun>> {
    await this.migrate();
    const rows = await this.read<LastRun & { schedule: string }>(
      `select distinct on (trigger) substr(trigger, 10) as schedule, outcome, finished_at as "finishedAt", error,
              error_code as "errorCode"
         from pgmaint.run_history where trigger like 'schedule:%' and finished_at is not null
        order by trigger, finished_at desc, id desc`,
    );
    return new Map(rows.map(({ schedule, ...last }) => [schedule, last]));
  }

  /** The newest finished (succeeded or failed) run of a job on a target. */
  async lastFinished<R = unknown>(job: string, target: string): Promise<HistoryRow<R> | undefined> {
    await this.migrate();
    const rows = await this.read<HistoryRow<R>>(
      `select * from pgmaint.run_history where job = $1 and target = $2 and outcome in ('succeeded', 'failed', ` +
        `'timed_out') order by started_at desc, id desc limit 1`,
      [job, target],
    );
    return rows[0];
  }

  /** Deletes finished rows older than the retention; returns how many went. */
  async prune(retentionDays: number): Promise<number> {
    await this.migrate();
    const res = await this.pool.query(
      `delete from pgmaint.run_history where started_at < now() - make_interval(days => $1) and outcome <> 'running'`,
      [retentionDays],
    );
    return res.rowCount ?? 0;
  }
}
