// The run-history table's SQL: its migration (creating or extending pgmaint.run_history)
// and the one statement a flush writes with. history.ts buffers the rows and reads them.

export const MIGRATION = `
create schema if not exists pgmaint;
create table if not exists pgmaint.run_history (
  id            bigserial primary key,
  run_id        uuid not null unique,
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
  outcome       text not null
                check (outcome in ('running','succeeded','failed','retrying','timed_out','skipped','abandoned')),
  error         text,
  result        jsonb,
  worker        text,
  error_code    text
);
-- Tables made before error codes get the column (their rows keep NULL). Checked first: ALTER TABLE needs
-- ownership even when there is nothing to add, and a table created beforehand may belong to another role.
do $$ begin
  if not exists (select from pg_attribute where attrelid = 'pgmaint.run_history'::regclass
                  and attname = 'error_code' and not attisdropped) then
    alter table pgmaint.run_history add column error_code text;
  end if;
end $$;
create index if not exists run_history_job_started on pgmaint.run_history (job, started_at desc);
create index if not exists run_history_job_id on pgmaint.run_history (queue, job_id);
create index if not exists run_history_started on pgmaint.run_history (started_at);
`;

// One statement per flush: new rows go in (a run that started and finished between
// two flushes goes in once, finished) and finishes of rows written before are
// applied. A run recovered from a lost worker also marks that worker's 'running'
// row 'abandoned'; the clauses a flush does not need are left out.
const RECORDSET = `jsonb_to_recordset($1::jsonb) as x(run_id uuid, queue text, job_id text, job text, target text,
  payload jsonb, trigger text, scheduled_for timestamptz, attempt int, started_at timestamptz, finished_at timestamptz,
  outcome text, error text, error_code text, result jsonb, worker text, recovered boolean)`;
const COLUMNS =
  'run_id, queue, job_id, job, target, payload, trigger, scheduled_for, attempt, started_at, finished_at, outcome, ' +
  'error, error_code, result, worker';

export function flushSql(parts: { inserts: boolean; recovered: boolean; updates: boolean }): string {
  const ctes: string[] = [];
  if (parts.inserts)
    ctes.push(
      `ins as (insert into pgmaint.run_history (${COLUMNS}) select ${COLUMNS} from ${RECORDSET} returning run_id)`,
    );
  if (parts.recovered) {
    ctes.push(`abandoned as (
      update pgmaint.run_history h set outcome = 'abandoned', finished_at = now(),
        error = 'worker lost (stalled job recovered by another worker)', error_code = 'WORKER_LOST'
        from ${RECORDSET} where x.recovered and h.queue = x.queue and h.job_id = x.job_id and h.outcome = 'running')`);
  }
  if (parts.updates) {
    ctes.push(`finished as (
      update pgmaint.run_history h set finished_at = u.finished_at, outcome = u.outcome, error = u.error,
        error_code = u.error_code, result = u.result
        from jsonb_to_recordset($2::jsonb) as u(run_id uuid, finished_at timestamptz, outcome text, error text,
          error_code text, result jsonb)
       where h.run_id = u.run_id)`);
  }
  // Both parameters are always referenced so every shape takes the same two.
  return `with ${ctes.join(',\n')} select 1 where $1::jsonb is not null and $2::jsonb is not null`;
}
