// query-stats-snapshot: every 15 minutes, what each statement of the target database
// cost since the last snapshot, from pg_stat_statements, kept in the pgmaint schema of the target with a
// retention: calls, total and mean execution time, rows, shared blocks hit and read.
// pg_stat_statements counts from its last reset: a reset (pg_stat_statements_info, or
// a statement whose counters went down) makes the counts since the reset the delta,
// never a negative one. The top statements by time since the last snapshot go to the
// result and to /metrics.
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from '../src/core/errors.ts';
import { withTransaction, requireExtension } from '../src/core/sql.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** Statements in the result (and /metrics), by total time since the last snapshot. */
  top: z.number().int().min(1).max(100).default(10),
  /** Snapshots older than this are deleted. */
  retentionDays: z.number().int().min(1).max(3650).default(14),
});

const SCHEMA = `
create schema if not exists pgmaint;
create table if not exists pgmaint.query_stats (
  taken_at        timestamptz not null,
  since           timestamptz not null,
  userid          oid not null,
  dbid            oid not null,
  queryid         bigint not null,
  query           text not null,
  calls           bigint not null,
  total_exec_ms   double precision not null,
  mean_exec_ms    double precision not null,
  rows            bigint not null,
  shared_blks_hit bigint not null,
  shared_blks_read bigint not null,
  primary key (taken_at, userid, dbid, queryid)
);
create index if not exists query_stats_taken on pgmaint.query_stats (taken_at);
-- The cumulative counters as last read, to compute the next deltas from.
create table if not exists pgmaint.query_stats_last (
  userid oid not null, dbid oid not null, queryid bigint not null,
  calls bigint not null, total_exec_ms double precision not null, rows bigint not null,
  shared_blks_hit bigint not null, shared_blks_read bigint not null,
  primary key (userid, dbid, queryid)
);
create table if not exists pgmaint.query_stats_state (
  id boolean primary key default true check (id), taken_at timestamptz not null, stats_reset timestamptz
);`;

interface Delta {
  queryid: string;
  query: string;
  calls: number;
  totalExecMs: number;
  meanExecMs: number;
  rows: number;
  sharedBlksHit: number;
  sharedBlksRead: number;
}

const job = defineJob({
  name: 'query-stats-snapshot',
  description:
    'Stores what each statement cost since the last snapshot (pg_stat_statements deltas: calls, time, rows, ' +
    'blocks), across statistics resets, with a retention; the top statements by time go to the result and /metrics.',
  payload,
  defaults: { attempts: 2, backoffMs: 30_000, timeoutMs: 10 * 60_000, concurrency: 1 },
  deduplicate: true,
  async handler(ctx, p) {
    return ctx.withClient(async (client) => {
      await requireStatements(client);
      await ctx.progress(10, 'reading pg_stat_statements');
      return await withTransaction(client, async () => {
        await client.query(`select pg_advisory_xact_lock(hashtext('pgmaint.query_stats'))`);
        await client.query(SCHEMA);
        const { rows: info } = await client.query<{ reset: Date | null; now: Date }>(
          `select (select stats_reset from pg_stat_statements_info) as reset, now() as now`,
        );
        const { rows: state } = await client.query<{ taken_at: Date; stats_reset: Date | null }>(
          `select taken_at, stats_reset from pgmaint.query_stats_state`,
        );
        const previous = state[0];
        const reset = info[0]!.reset;
        const wasReset = previous !== undefined && (reset?.getTime() ?? 0) !== (previous.stats_reset?.getTime() ?? 0);
        // The interval the deltas cover: since the last snapshot, or since the reset after it.
        const since = !previous ? null : wasReset && reset ? reset : previous.taken_at;
        const { rows: deltas } = await client.query<Delta>(
          `with cur as (
             select userid, dbid, queryid, max(query) as query, sum(calls)::bigint as calls,
                    sum(total_exec_time) as total_exec_ms, sum(rows)::bigint as rows,
                    sum(shared_blks_hit)::bigint as shared_blks_hit, sum(shared_blks_read)::bigint as shared_blks_read
               from pg_stat_statements
              where queryid is not null and dbid = (select oid from pg_database where datname = current_database())
              group by 1, 2, 3),
           d as (
             select cur.*,
                    -- no earlier reading, a reset, or counters that went down: all since the reset counts
                    case when l.queryid is null or $1 or cur.calls < l.calls then cur.calls
                         else cur.calls - l.calls end as d_calls,
                    case when l.queryid is null or $1 or cur.calls < l.calls then cur.total_exec_ms
                         else cur.total_exec_ms - l.total_exec_ms end as d_ms,
                    case when l.queryid is null or $1 or cur.calls < l.calls then cur.rows
                         else cur.rows - l.rows end as d_rows,
                    case when l.queryid is null or $1 or cur.calls < l.calls then cur.shared_blks_hit
                         else cur.shared_blks_hit - l.shared_blks_hit end as d_hit,
                    case when l.queryid is null or $1 or cur.calls < l.calls then cur.shared_blks_read
                         else cur.shared_blks_read - l.shared_blks_read end as d_read
               from cur left join pgmaint.query_stats_last l using (userid, dbid, queryid)),
           ins as (
             insert into pgmaint.query_stats
             select $2::timestamptz, coalesce($3::timestamptz, $2::timestamptz), userid, dbid, queryid,
                    left(query, 2000), d_calls, d_ms, d_ms / nullif(d_calls, 0), d_rows, d_hit, d_read
               from d where d_calls > 0 and $3::timestamptz is not null
             returning 1)
           select queryid::text, left(query, 300) as query, d_calls::float8 as calls, d_ms as "totalExecMs",
                  coalesce(d_ms / nullif(d_calls, 0), 0) as "meanExecMs", d_rows::float8 as rows,
                  d_hit::float8 as "sharedBlksHit", d_read::float8 as "sharedBlksRead"
             from d where d_calls > 0 and $3::timestamptz is not null
            order by d_ms desc`,
          [wasReset, info[0]!.now, since],
        );
        await client.query(
          `delete from pgmaint.query_stats_last;
           insert into pgmaint.query_stats_last
           select userid, dbid, queryid, sum(calls), sum(total_exec_time), sum(rows), sum(shared_blks_hit),
                  sum(shared_blks_read)
             from pg_stat_statements
            where queryid is not null and dbid = (select oid from pg_database where datname = current_database())
            group by 1, 2, 3`,
        );
        await client.query(
          `insert into pgmaint.query_stats_state (taken_at, stats_reset) values ($1, $2)
           on conflict (id) do update set taken_at = excluded.taken_at, stats_reset = excluded.stats_reset`,
          [info[0]!.now, reset],
        );
        const pruned = await client.query(
          `delete from pgmaint.query_stats where taken_at < now() - make_interval(days => $1)`,
          [p.retentionDays],
        );
        const first = since === null;
        await ctx.log(
          first
            ? 'first snapshot: the counters are recorded; deltas start with the next one'
            : `${deltas.length} statements ran since ${since.toISOString()}` +
                (wasReset ? ' (statistics were reset)' : ''),
        );
        return {
          takenAt: info[0]!.now.toISOString(),
          since: since?.toISOString() ?? null,
          statisticsReset: wasReset,
          statements: deltas.length,
          totalExecMs: deltas.reduce((n, d) => n + d.totalExecMs, 0),
          top: deltas.slice(0, p.top),
          snapshotsPruned: pruned.rowCount ?? 0,
        };
      });
    });
  },
});

/**
 * A clear refusal when pg_stat_statements is not installed, or not loaded. Whether it is
 * loaded is what reading it says: shared_preload_libraries may name it in several ways
 * ('$libdir/pg_stat_statements', quoted, …), and reading is what the snapshot needs.
 */
async function requireStatements(client: pg.ClientBase): Promise<void> {
  await requireExtension(client, 'pg_stat_statements');
  try {
    await client.query('select dealloc from pg_stat_statements_info');
  } catch (err) {
    // 55000: "pg_stat_statements must be loaded via shared_preload_libraries".
    if ((err as { code?: string }).code !== '55000') throw err;
    const { rows } = await client.query<{ db: string }>('select current_database() as db');
    throw new PermanentJobError(
      `pg_stat_statements is not loaded (its view cannot be read): add it to shared_preload_libraries and ` +
        `restart PostgreSQL (database ${rows[0]!.db})`,
      'EXTENSION',
    );
  }
}

export default job;

/** What a query-stats-snapshot run returns (its result in the run history, the API and /metrics). */
export type QueryStatsSnapshotResult = JobResult<typeof job>;
