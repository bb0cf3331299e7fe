// The durable record of every run: one row per attempt in pgmaint.run_history on
// the history target. Redis keeps only a bounded number of finished jobs.
import type pg from 'pg';

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
}

export interface HistoryRow {
  id: string;
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
  result: unknown;
  worker: string | null;
}

const MIGRATION = `
create schema if not exists pgmaint;
create table if not exists pgmaint.run_history (
  id            bigserial primary key,
  queue         text not null,
  job_id        text not null,
  job           text not null,
  target        text not null,
  payload       jsonb not null,
  trigger       text not null,
  scheduled_for timestamptz,
  attempt       int not null,
  started_at    timestamptz not null default now(),
  finished_at   timestamptz,
  outcome       text not null check (outcome in ('running','succeeded','failed','retrying','timed_out','skipped','abandoned')),
  error         text,
  result        jsonb,
  worker        text
);
create index if not exists run_history_job_started on pgmaint.run_history (job, started_at desc);
create index if not exists run_history_job_id on pgmaint.run_history (queue, job_id);
create index if not exists run_history_started on pgmaint.run_history (started_at);
`;

export class RunHistory {
  private ready?: Promise<void>;

  constructor(private readonly pool: pg.Pool) {}

  /** Creates the table once per process; concurrent starters serialize on an advisory lock. */
  migrate(): Promise<void> {
    this.ready ??= (async () => {
      const client = await this.pool.connect();
      try {
        await client.query('begin');
        await client.query(`select pg_advisory_xact_lock(hashtext('pgmaint.run_history'))`);
        await client.query(MIGRATION);
        await client.query('commit');
      } catch (err) {
        await client.query('rollback').catch(() => undefined);
        this.ready = undefined;
        throw err;
      } finally {
        client.release();
      }
    })();
    return this.ready;
  }

  /** Records a started attempt; an earlier attempt of the same job still marked running
   * was lost with its worker (SIGKILL, crash) and becomes 'abandoned'. */
  async start(run: RunStart): Promise<string> {
    await this.migrate();
    const { rows } = await this.pool.query<{ id: string }>(
      `with abandoned as (
         update pgmaint.run_history set outcome = 'abandoned', finished_at = now(), error = 'worker lost (stalled job recovered by another worker)'
          where queue = $1 and job_id = $2 and outcome = 'running'
       )
       insert into pgmaint.run_history (queue, job_id, job, target, payload, trigger, scheduled_for, attempt, worker, outcome)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running') returning id`,
      [run.queue, run.jobId, run.job, run.target, JSON.stringify(run.payload ?? {}), run.trigger, run.scheduledFor ?? null, run.attempt, run.worker],
    );
    return rows[0]!.id;
  }

  async finish(id: string, outcome: Exclude<Outcome, 'running'>, detail: { error?: string; result?: unknown }): Promise<void> {
    await this.pool.query(`update pgmaint.run_history set finished_at = now(), outcome = $2, error = $3, result = $4 where id = $1`, [
      id,
      outcome,
      detail.error ?? null,
      detail.result === undefined ? null : JSON.stringify(detail.result),
    ]);
  }

  /** A run that did not start (overlap, missed while down) is recorded in one row. */
  async skipped(run: RunStart, reason: string): Promise<void> {
    await this.migrate();
    await this.pool.query(
      `insert into pgmaint.run_history (queue, job_id, job, target, payload, trigger, scheduled_for, attempt, worker, outcome, finished_at, result)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'skipped', now(), $10)`,
      [run.queue, run.jobId, run.job, run.target, JSON.stringify(run.payload ?? {}), run.trigger, run.scheduledFor ?? null, run.attempt, run.worker, JSON.stringify({ skipped: reason })],
    );
  }

  async list(filter: { job?: string; limit?: number } = {}): Promise<HistoryRow[]> {
    await this.migrate();
    const { rows } = await this.pool.query<HistoryRow>(
      `select * from pgmaint.run_history where ($1::text is null or job = $1) order by started_at desc, id desc limit $2`,
      [filter.job ?? null, filter.limit ?? 20],
    );
    return rows;
  }

  /** Deletes finished rows older than the retention; returns how many went. */
  async prune(retentionDays: number): Promise<number> {
    await this.migrate();
    const res = await this.pool.query(`delete from pgmaint.run_history where started_at < now() - make_interval(days => $1) and outcome <> 'running'`, [retentionDays]);
    return res.rowCount ?? 0;
  }
}
