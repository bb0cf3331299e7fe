// vacuum-analyze: VACUUM and ANALYZE of the tables that need it, chosen from the
// statistics — dead-tuple ratio and count, rows changed since the last analyze,
// time since the last (auto)vacuum, transaction-ID age against a freeze threshold —
// and ANALYZE of partitioned parents, which autovacuum never analyzes. One table at
// a time, under lock_timeout, skipping a table autovacuum is working on right now,
// throttled as autovacuum is unless asked otherwise, and within a time budget after
// which it stops cleanly and reports what is left. The ANALYZEs of consecutive tables
// commit together (AnalyzeBatch, src/core/analyze-batch.ts), so the application's
// sessions reload statistics once. VACUUM FULL only for a table the payload names in
// vacuumFull.
import type pg from 'pg';
import { z } from 'zod';
import { GovernorDeferredError, PermanentJobError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { qualifiedName, quoteQualified, lockTimeoutSetting, schemaName } from '../src/core/sql.ts';
import { AnalyzeBatch } from '../src/core/analyze-batch.ts';
import { vacuumSettings } from '../src/core/gentle.ts';

const thresholds = z
  .object({
    /** Dead tuples as a share of all tuples… */
    deadRatio: z.number().min(0).max(1).default(0.1),
    /** …and at least this many. */
    minDeadTuples: z.number().int().min(0).default(1000),
    /** Rows changed since the last analyze as a share of live rows… */
    modRatio: z.number().min(0).default(0.1),
    /** …and at least this many. */
    minModTuples: z.number().int().min(0).default(1000),
    /** A table with dead tuples not vacuumed (by anyone) for this long. */
    maxDaysSinceVacuum: z.number().min(0).default(7),
    /** age(relfrozenxid) from which a table is vacuumed to freeze (autovacuum forces it at 200 M). */
    freezeAge: z.number().int().min(1_000_000).default(150_000_000),
    /** A partitioned parent analyzed longer ago than this (or never) is analyzed. */
    parentAnalyzeHours: z.number().min(0).default(24),
  })
  .strict();

export const payload = z.object({
  target: targetField,
  /** Schemas to consider; default all but the system ones. */
  schemas: z.array(schemaName).optional(),
  thresholds: thresholds.default(thresholds.parse({})),
  /** Stop starting tables after this long; a running one is cancelled at it. */
  budgetSeconds: z.number().int().min(1).max(86_400).default(1800),
  /** lock_timeout for each table's VACUUM/ANALYZE, e.g. "2s". */
  lockTimeout: lockTimeoutSetting('2s'),
  /**
   * Throttle: vacuum_cost_delay (ms) for this session, 2 by default as autovacuum's
   * (a manual VACUUM runs unthrottled: 0 asks for that), and vacuum_cost_limit
   * (default the server's, 200). While governed, the governor's vacuumCostDelayMs and
   * vacuumCostLimit where they are stricter.
   */
  costDelayMs: z.number().min(0).max(100).default(2),
  costLimit: z.number().int().min(1).max(10_000).optional(),
  /** Tables (schema.table) to VACUUM FULL. It takes an ACCESS EXCLUSIVE lock: never done unless named here. */
  vacuumFull: z.array(qualifiedName).max(20).default([]),
  /** Choose and report, run nothing. */
  dryRun: z.boolean().default(false),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});

type Payload = z.output<typeof payload>;
export type Action = 'VACUUM ANALYZE' | 'VACUUM' | 'ANALYZE' | 'VACUUM FULL ANALYZE';

interface Candidate {
  table: string;
  schema: string;
  name: string;
  kind: 'table' | 'partitioned' | 'matview';
  action: Action;
  reasons: string[];
  deadTuples: number;
  priority: number;
}

interface TableStats {
  schema: string;
  name: string;
  relkind: string;
  live: string;
  dead: string;
  mods: string;
  last_vacuum: Date | null;
  last_analyze: Date | null;
  xid_age: number | null;
}

async function readStats(client: pg.ClientBase, schemas: string[] | undefined): Promise<TableStats[]> {
  await client.query('select pg_stat_clear_snapshot()');
  const { rows } = await client.query<TableStats>(
    `select n.nspname as schema, c.relname as name, c.relkind,
            coalesce(s.n_live_tup, 0) as live, coalesce(s.n_dead_tup, 0) as dead, coalesce(s.n_mod_since_analyze, 0)
              as mods,
            greatest(s.last_vacuum, s.last_autovacuum) as last_vacuum, greatest(s.last_analyze, s.last_autoanalyze) as
              last_analyze,
            case when c.relkind in ('r', 'm') then age(c.relfrozenxid) end as xid_age
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       left join pg_stat_all_tables s on s.relid = c.oid
      where c.relkind in ('r', 'm', 'p') and c.relpersistence = 'p'
        and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
        and ($1::text[] is null or n.nspname = any($1))`,
    [schemas ?? null],
  );
  return rows;
}

/** Why each table needs work, or nothing; most urgent first. */
export function choose(
  stats: TableStats[],
  t: z.output<typeof thresholds>,
  vacuumFull: string[],
  now = Date.now(),
): Candidate[] {
  const out: Candidate[] = [];
  for (const s of stats) {
    const table = `${s.schema}.${s.name}`;
    const live = Number(s.live);
    const dead = Number(s.dead);
    const mods = Number(s.mods);
    const reasons: string[] = [];
    let vacuum = false;
    let analyze = false;
    let priority = 0;
    if (s.relkind === 'p') {
      const hours = s.last_analyze ? (now - s.last_analyze.getTime()) / 3_600_000 : Infinity;
      if (hours >= t.parentAnalyzeHours) {
        reasons.push(
          s.last_analyze
            ? `partitioned parent last analyzed ${hours.toFixed(1)} h ago (autovacuum never analyzes parents)`
            : 'partitioned parent never analyzed (autovacuum never analyzes parents)',
        );
        out.push({
          table,
          schema: s.schema,
          name: s.name,
          kind: 'partitioned',
          action: 'ANALYZE',
          reasons,
          deadTuples: 0,
          priority: 1,
        });
      }
      continue;
    }
    if (s.xid_age !== null && s.xid_age >= t.freezeAge) {
      vacuum = true;
      priority = 1e12 + s.xid_age;
      reasons.push(`transaction-ID age ${s.xid_age} ≥ ${t.freezeAge}`);
    }
    const ratio = dead / Math.max(live + dead, 1);
    if (dead >= t.minDeadTuples && ratio >= t.deadRatio) {
      vacuum = analyze = true;
      priority = Math.max(priority, dead);
      reasons.push(`${dead} dead tuples (${(ratio * 100).toFixed(1)} % of the table)`);
    }
    if (mods >= t.minModTuples && mods / Math.max(live, 1) >= t.modRatio) {
      analyze = true;
      priority = Math.max(priority, mods / 10);
      reasons.push(`${mods} rows changed since the last analyze`);
    }
    const days = s.last_vacuum ? (now - s.last_vacuum.getTime()) / 86_400_000 : Infinity;
    if (dead > 0 && days >= t.maxDaysSinceVacuum) {
      vacuum = true;
      priority = Math.max(priority, 1);
      reasons.push(
        s.last_vacuum
          ? `${dead} dead tuples and no vacuum for ${days.toFixed(1)} days`
          : `${dead} dead tuples and never vacuumed`,
      );
    }
    const full = vacuumFull.includes(table);
    if (full) reasons.push('VACUUM FULL requested in the payload');
    if (!vacuum && !analyze && !full) continue;
    const action: Action = full
      ? 'VACUUM FULL ANALYZE'
      : vacuum && analyze
        ? 'VACUUM ANALYZE'
        : vacuum
          ? 'VACUUM'
          : 'ANALYZE';
    out.push({
      table,
      schema: s.schema,
      name: s.name,
      kind: s.relkind === 'm' ? 'matview' : 'table',
      action,
      reasons,
      deadTuples: dead,
      priority: full ? 1e13 : priority,
    });
  }
  return out.sort((a, b) => b.priority - a.priority);
}

/** What a candidate runs: a VACUUM on its own, then its ANALYZE, which joins the open batch. */
export function steps(action: Action, rel: string): { vacuum?: string; analyze?: string } {
  switch (action) {
    case 'ANALYZE':
      return { analyze: `analyze ${rel}` };
    case 'VACUUM':
      return { vacuum: `vacuum ${rel}` };
    case 'VACUUM ANALYZE':
      return { vacuum: `vacuum ${rel}`, analyze: `analyze ${rel}` };
    case 'VACUUM FULL ANALYZE':
      return { vacuum: `vacuum (full) ${rel}`, analyze: `analyze ${rel}` };
  }
}

interface TableResult {
  table: string;
  action: Action;
  reasons: string[];
  deadBefore: number;
  deadAfter?: number;
  durationMs?: number;
  skipped?: string;
}

const job = defineJob({
  name: 'vacuum-analyze',
  description:
    'VACUUM/ANALYZE of the tables that need it by their statistics (and partitioned parents), one at a time, under ' +
    'lock_timeout, within a time budget.',
  payload,
  defaults: { attempts: 2, backoffMs: 60_000, timeoutMs: 6 * 3_600_000, concurrency: 1, heavy: true },
  deduplicate: true,
  async handler(ctx, p) {
    return ctx.withClient(
      async (client) => {
        const stats = await readStats(client, p.schemas);
        const unknown = p.vacuumFull.filter(
          (t) => !stats.some((s) => `${s.schema}.${s.name}` === t && s.relkind !== 'p'),
        );
        if (unknown.length)
          throw new PermanentJobError(
            `vacuumFull: ${unknown.join(', ')} is not a table of this ` +
              `database${p.schemas ? ' in the schemas given' : ''}`,
          );
        const chosen = choose(stats, p.thresholds, p.vacuumFull);
        await ctx.log(
          `${chosen.length} of ${stats.length} tables need work: ` +
            `${chosen.map((c) => `${c.table} (${c.action}: ${c.reasons.join('; ')})`).join(', ') || 'none'}`,
        );
        if (p.dryRun)
          return { dryRun: true, considered: stats.length, chosen: chosen.map(({ priority: _, ...c }) => c) };
        return await work(ctx, client, p, chosen, stats.length);
      },
      { reset: 'reset all' },
    );
  },
});

async function work(ctx: JobContext, client: pg.PoolClient, p: Payload, chosen: Candidate[], considered: number) {
  const started = Date.now();
  const deadline = started + p.budgetSeconds * 1000;
  await client.query(`select set_config('lock_timeout', $1, false)`, [p.lockTimeout]);
  // The job's throttle, or the governor's where it is stricter (core/gentle.ts).
  const serverLimit = Number((await client.query(`select current_setting('vacuum_cost_limit') as l`)).rows[0].l);
  for (const [name, value] of Object.entries(vacuumSettings(ctx.governor.gentle, p, serverLimit)))
    await client.query(`select set_config($1, $2, false)`, [name, value]);
  // The throttle as the server took it, for the result.
  const throttle = (
    await client.query<{ costDelay: string; costLimit: string; parallelWorkers: string }>(
      `select current_setting('vacuum_cost_delay') as "costDelay", current_setting('vacuum_cost_limit') as "costLimit",
              current_setting('max_parallel_maintenance_workers') as "parallelWorkers"`,
    )
  ).rows[0]!;
  const results: TableResult[] = [];
  const left: string[] = [];
  let stoppedAtBudget = false;
  let deferred: string | undefined;
  const batch = new AnalyzeBatch(client);
  try {
    for (const [i, c] of chosen.entries()) {
      // A unit: one table. Nothing is held while the governor makes it wait (the ANALYZE batch commits).
      if (!stoppedAtBudget && !deferred)
        await ctx.governor
          .gate(`${c.action} ${c.table}`, { deadline, beforeWait: () => batch.commit() })
          .catch((err: unknown) => {
            if (!(err instanceof GovernorDeferredError)) throw err;
            deferred = err.message;
          });
      const remaining = deadline - Date.now();
      if (deferred) {
        left.push(c.table);
        continue;
      }
      if (stoppedAtBudget || remaining <= 0) {
        stoppedAtBudget = true;
        left.push(c.table);
        continue;
      }
      const r: TableResult = { table: c.table, action: c.action, reasons: c.reasons, deadBefore: c.deadTuples };
      results.push(r);
      const rel = quoteQualified(c.schema, c.name);
      // A table dropped since it was chosen (the run may have waited for the governor) is skipped.
      const busy = await client.query<{ who: string | null }>(
        `select null as who where to_regclass($1) is null
       union all select a.backend_type from pg_stat_progress_vacuum v join pg_stat_activity a using (pid)
        where v.relid = to_regclass($1)
       union all select a.backend_type from pg_stat_progress_analyze v join pg_stat_activity a using (pid) where
         v.relid = to_regclass($1)`,
        [rel],
      );
      if (busy.rows.length) {
        const who = busy.rows[0]!.who;
        r.skipped = who === null ? 'dropped since it was chosen' : `${who} is working on it right now`;
        await ctx.log(`${c.table}: skipped, ${r.skipped}`);
        continue;
      }
      await ctx.progress((100 * i) / chosen.length, `${c.action} ${c.table}`);
      // A table still running at the end of the budget is cancelled there.
      await client.query(`select set_config('statement_timeout', $1, false)`, [String(Math.max(1000, remaining))]);
      const t0 = Date.now();
      const { vacuum, analyze } = steps(c.action, rel);
      try {
        if (vacuum) {
          await batch.commit();
          await client.query(vacuum);
        }
        if (analyze) await batch.run(analyze);
        r.durationMs = Date.now() - t0;
        await client.query('select pg_stat_clear_snapshot()');
        const { rows } = await client.query<{ dead: string }>(
          `select coalesce(n_dead_tup, 0) as dead from pg_stat_all_tables where relid = $1::regclass`,
          [rel],
        );
        r.deadAfter = Number(rows[0]?.dead ?? 0);
        await ctx.log(`${c.table}: ${c.action} in ${r.durationMs} ms, dead tuples ${r.deadBefore} → ${r.deadAfter}`);
      } catch (err) {
        const code = (err as { code?: string }).code;
        r.durationMs = Date.now() - t0;
        if (code === '55P03') r.skipped = `lock not available within ${p.lockTimeout} (lock_timeout)`;
        else if (code === '42P01') r.skipped = 'dropped since it was chosen';
        else if (code === '57014') {
          r.skipped = `cancelled at the end of the ${p.budgetSeconds} s budget`;
          stoppedAtBudget = true;
        } else {
          // The batch's earlier ANALYZEs are kept if the session still can; if it cannot
          // (the error that stopped us may have ended it), that error is the one reported.
          await batch.commit().catch(() => undefined);
          throw err;
        }
        await ctx.log(`${c.table}: skipped, ${r.skipped}`);
      }
    }
    await batch.commit();
  } finally {
    // Open only when an error escaped mid-batch: the session goes back to the pool clean.
    await batch.abandon();
  }
  if (deferred) await ctx.log(`${deferred}; left for the next run: ${left.join(', ')}`);
  if (stoppedAtBudget)
    await ctx.log(
      `time budget of ${p.budgetSeconds} s used up; left for the next run: ${left.join(', ') || 'nothing'}`,
    );
  await ctx.progress(
    100,
    `${results.filter((r) => !r.skipped).length} tables done, ${results.filter((r) => r.skipped).length} skipped, ` +
      `${left.length} left`,
  );
  return {
    considered,
    chosen: chosen.length,
    tables: results,
    left,
    stoppedAtBudget,
    throttle: {
      costDelay: throttle.costDelay,
      costLimit: Number(throttle.costLimit),
      maxParallelMaintenanceWorkers: Number(throttle.parallelWorkers),
    },
    durationMs: Date.now() - started,
  };
}

export default job;

/** What a vacuum-analyze run returns (its result in the run history and the API). */
export type VacuumAnalyzeResult = JobResult<typeof job>;
