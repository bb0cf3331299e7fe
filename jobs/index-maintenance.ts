// index-maintenance: rebuilds, with REINDEX INDEX CONCURRENTLY and one at a time, the
// btree indexes whose bloat is over a threshold (and size over a floor), and the
// invalid indexes a failed CREATE INDEX CONCURRENTLY left. Bloat comes from pgstattuple's
// pgstatindex when the extension is installed, else from a catalog estimate (the result
// says which). An interrupted REINDEX CONCURRENTLY leaves invalid "_ccnew"/"_ccold"
// indexes behind: every run first drops those, so a killed worker leaves nothing the
// next run does not clean. A table that autovacuum or another index build is working on
// is skipped with the reason. Inserts and updates go on during a rebuild: REINDEX
// CONCURRENTLY holds SHARE UPDATE EXCLUSIVE and waits only briefly, under lock_timeout.
// A rebuild that cannot wait (an open transaction that wrote the table) is skipped with
// the reason and the run goes on; its invalid copy is dropped under lock_timeout too, and
// when that cannot be done now either (the same transaction) it is kept in the result
// and stays in the catalog, where /metrics counts it and the next run drops it.
import type pg from 'pg';
import { z } from 'zod';
import { lockTimeoutSetting, schemaName, extensionsOf } from '../src/core/sql.ts';
import { GovernorDeferredError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { buildSettings } from '../src/core/gentle.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';

const indexName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_$]{0,62}\.[A-Za-z_][A-Za-z0-9_$]{0,62}$/, 'must be schema.index (plain names)');

export const payload = z.object({
  target: targetField,
  /** Schemas to consider; default all but the system ones. */
  schemas: z.array(schemaName).optional(),
  /** Rebuild a btree index whose estimated bloat is at least this share (percent)… */
  bloatPercent: z.number().min(1).max(99).default(30),
  /** …and that is at least this large. */
  minBytes: z
    .number()
    .int()
    .min(0)
    .default(10 * 1024 * 1024),
  /** Only these indexes (schema.index), whatever their bloat. */
  indexes: z.array(indexName).max(100).optional(),
  /** Stop starting rebuilds after this long; a running one is cancelled at it. */
  budgetSeconds: z.number().int().min(1).max(86_400).default(1800),
  /** lock_timeout for each rebuild's short waits, e.g. "5s". */
  lockTimeout: lockTimeoutSetting('5s'),
  /** Choose and report, rebuild nothing (leftovers are still only listed). */
  dryRun: z.boolean().default(false),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});

type Payload = z.output<typeof payload>;

interface Candidate {
  oid: number;
  index: string;
  table: string;
  tableOid: number;
  bytes: number;
  valid: boolean;
  bloatPercent: number | null;
  reason: string;
}

/** Invalid leftovers of an interrupted REINDEX CONCURRENTLY: "<name>_ccnew", "_ccnew1", "_ccold", … */
const LEFTOVERS = `
  select c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) as index
    from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
   where not i.indisvalid and c.relname ~ '_cc(new|old)[0-9]*$'
     and n.nspname not in ('pg_catalog', 'information_schema') and ($1::text[] is null or n.nspname = any($1))`;

const INDEXES = `
  select c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) as index,
         n.nspname || '.' || c.relname as name, t.oid as "tableOid",
         quote_ident(n.nspname) || '.' || quote_ident(t.relname) as "table",
         pg_relation_size(c.oid)::float8 as bytes, i.indisvalid as valid, am.amname = 'btree' as btree,
         c.relpages::float8 as pages, t.reltuples::float8 as tuples,
         coalesce((select option_value::int from pg_options_to_table(c.reloptions) where option_name = 'fillfactor'),
           90) as fillfactor,
         -- the catalog estimate's key width: the statistics' average width of each key column
         (select sum(coalesce(s.avg_width, -100000)) from unnest(i.indkey::int2[]) k(attnum)
            left join pg_attribute a on a.attrelid = t.oid and a.attnum = k.attnum
            left join pg_stats s on s.schemaname = n.nspname and s.tablename = t.relname and s.attname = a.attname)
           as "keyWidth",
         i.indexprs is not null as expressions
    from pg_index i join pg_class c on c.oid = i.indexrelid join pg_class t on t.oid = i.indrelid
    join pg_namespace n on n.oid = c.relnamespace join pg_am am on am.oid = c.relam
   where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname !~ '^pg_temp'
     and c.relkind = 'i' and c.relname !~ '_cc(new|old)[0-9]*$'
     and ($1::text[] is null or n.nspname = any($1))
   order by bytes desc`;

const job = defineJob({
  name: 'index-maintenance',
  description:
    'REINDEX INDEX CONCURRENTLY of bloated btree indexes and of invalid ones, one at a time, under lock_timeout ' +
    'and a time budget; cleans the leftovers of an interrupted rebuild first.',
  payload,
  defaults: { attempts: 2, backoffMs: 60_000, timeoutMs: 6 * 3_600_000, concurrency: 1, heavy: true },
  deduplicate: true,
  async handler(ctx, p) {
    const deadline = Date.now() + p.budgetSeconds * 1000;
    const schemas = p.schemas ?? null;
    return ctx.withClient(
      async (client) => {
        await ctx.progress(2, 'looking for leftovers of interrupted rebuilds');
        const leftovers = (await client.query<{ oid: number; index: string }>(LEFTOVERS, [schemas])).rows;
        const cleaned: string[] = [];
        /** Leftovers that could not be dropped now: the next run drops them. */
        const kept: { index: string; reason: string }[] = [];
        for (const l of leftovers) {
          if (p.dryRun) continue;
          const notNow = await dropLeftover(client, l.index, p.lockTimeout);
          if (notNow) {
            kept.push({ index: l.index, reason: notNow });
            await ctx.log(`${l.index} (an interrupted REINDEX CONCURRENTLY's) not dropped now: ${notNow}`);
            continue;
          }
          cleaned.push(l.index);
          await ctx.log(`dropped ${l.index}, left by an interrupted REINDEX CONCURRENTLY`);
        }

        // Governed, the rebuilds take no parallel workers: a build does not take every core (core/gentle.ts).
        for (const [name, value] of Object.entries(buildSettings(ctx.governor.gentle)))
          await client.query(`select set_config($1, $2, false)`, [name, value]);
        const parallelWorkers = Number(
          (await client.query(`select current_setting('max_parallel_maintenance_workers') as n`)).rows[0].n,
        );
        await ctx.progress(10, 'estimating bloat');
        const method = await bloatMethod(client);
        const candidates = await chooseCandidates(client, p, method, schemas);
        for (const c of candidates) await ctx.log(`candidate ${c.index}: ${c.reason}`);

        const rebuilt: { index: string; bytesBefore: number; bytesAfter: number; seconds: number; reason: string }[] =
          [];
        const skipped: { index: string; reason: string }[] = [];
        const left: string[] = [];
        for (const [n, c] of candidates.entries()) {
          ctx.signal.throwIfAborted();
          if (p.dryRun) continue;
          // A unit: one index. Held past the window or the budget, the rest is left for the next run.
          const deferred = await ctx.governor.gate(`REINDEX INDEX CONCURRENTLY ${c.index}`, { deadline }).then(
            () => undefined,
            (err: unknown) => {
              if (err instanceof GovernorDeferredError) return err.message;
              throw err;
            },
          );
          if (deferred) {
            left.push(...candidates.slice(n).map((x) => x.index));
            await ctx.log(`${deferred}; left: ${left.join(', ')}`);
            break;
          }
          const remaining = deadline - Date.now();
          if (remaining < 1000) {
            left.push(...candidates.slice(n).map((x) => x.index));
            await ctx.log(`budget of ${p.budgetSeconds}s spent; left: ${left.join(', ')}`);
            break;
          }
          const busy = await busyWith(client, c.tableOid);
          if (busy) {
            skipped.push({ index: c.index, reason: busy });
            await ctx.log(`skipped ${c.index}: ${busy}`);
            continue;
          }
          await ctx.progress(15 + (80 * n) / candidates.length, `REINDEX INDEX CONCURRENTLY ${c.index}`);
          const outcome = await rebuild(ctx, client, c, p.lockTimeout, remaining);
          if ('error' in outcome) {
            kept.push(...outcome.kept);
            skipped.push({ index: c.index, reason: outcome.error });
            await ctx.log(`skipped ${c.index}: ${outcome.error}`);
            if (outcome.budget) left.push(...candidates.slice(n).map((x) => x.index));
            if (outcome.budget) break;
            continue;
          }
          rebuilt.push({ index: c.index, reason: c.reason, ...outcome });
          await ctx.log(
            `rebuilt ${c.index}: ${outcome.bytesBefore} → ${outcome.bytesAfter} bytes ` +
              `in ${outcome.seconds.toFixed(1)}s`,
          );
        }
        return {
          bloatMethod: method,
          dryRun: p.dryRun,
          leftovers: leftovers.map((l) => l.index),
          cleaned,
          kept,
          candidates: candidates.map(({ index, bytes, valid, bloatPercent, reason }) => ({
            index,
            bytes,
            valid,
            bloatPercent,
            reason,
          })),
          rebuilt,
          skipped,
          left,
          bytesFreed: rebuilt.reduce((n, r) => n + Math.max(0, r.bytesBefore - r.bytesAfter), 0),
          /** The rebuilds' session setting, as the server took it. */
          maxParallelMaintenanceWorkers: parallelWorkers,
        };
      },
      { reset: 'reset lock_timeout; reset statement_timeout; reset max_parallel_maintenance_workers' },
    );
  },
});

/** pgstatindex when pgstattuple is installed (it reads the index), else the catalog estimate. */
async function bloatMethod(client: pg.ClientBase): Promise<'pgstatindex' | 'catalog estimate'> {
  return (await extensionsOf(client)).versions.has('pgstattuple') ? 'pgstatindex' : 'catalog estimate';
}

async function chooseCandidates(
  client: pg.ClientBase,
  p: Payload,
  method: 'pgstatindex' | 'catalog estimate',
  schemas: string[] | null,
): Promise<Candidate[]> {
  const { rows } = await client.query<{
    oid: number;
    index: string;
    name: string;
    tableOid: number;
    table: string;
    bytes: number;
    valid: boolean;
    btree: boolean;
    pages: number;
    tuples: number;
    fillfactor: number;
    keyWidth: number | null;
    expressions: boolean;
  }>(INDEXES, [schemas]);
  const out: Candidate[] = [];
  for (const r of rows) {
    const named = p.indexes?.includes(r.name);
    if (p.indexes && !named) continue;
    const base = { oid: r.oid, index: r.index, table: r.table, tableOid: r.tableOid, bytes: r.bytes, valid: r.valid };
    if (!r.valid) {
      out.push({ ...base, bloatPercent: null, reason: 'invalid (a failed CREATE INDEX CONCURRENTLY)' });
      continue;
    }
    if (named) {
      out.push({ ...base, bloatPercent: null, reason: 'named in the payload' });
      continue;
    }
    if (!r.btree || r.bytes < p.minBytes) continue;
    let bloat: number | null;
    if (method === 'pgstatindex') {
      const { rows: st } = await client.query<{ density: number; leaves: number }>(
        `select avg_leaf_density::float8 as density, leaf_pages::float8 as leaves from pgstatindex($1::regclass)`,
        [r.oid],
      );
      const { density, leaves } = st[0] ?? { density: Number.NaN, leaves: 0 };
      // A freshly built index is filled to its fillfactor; what is missing from that is bloat.
      // An index of one leaf page has no density worth the name.
      bloat = leaves < 2 || Number.isNaN(density) ? null : Math.max(0, 100 - (100 * density) / r.fillfactor);
    } else {
      bloat = catalogEstimate(r);
    }
    if (bloat !== null && bloat >= p.bloatPercent)
      out.push({
        ...base,
        bloatPercent: Math.round(bloat * 10) / 10,
        reason: `bloat ${bloat.toFixed(1)} % (${method}) ≥ ${p.bloatPercent} %, ${r.bytes} bytes`,
      });
  }
  return out;
}

/** Leaf pages a fresh btree would need for the table's rows at the fillfactor, against what it has. */
function catalogEstimate(r: {
  pages: number;
  tuples: number;
  fillfactor: number;
  keyWidth: number | null;
  expressions: boolean;
}): number | null {
  if (r.expressions || r.keyWidth === null || r.keyWidth < 0 || r.tuples <= 0 || r.pages < 2) return null;
  const tupleBytes = 8 + Math.ceil(r.keyWidth / 8) * 8 + 4; // index tuple header, key (aligned), line pointer
  const expected = Math.ceil((r.tuples * tupleBytes) / ((8192 - 24 - 16) * (r.fillfactor / 100))) + 1;
  return Math.max(0, 100 * (1 - expected / r.pages));
}

/** Why the table cannot be worked on now, or undefined. */
async function busyWith(client: pg.ClientBase, tableOid: number): Promise<string | undefined> {
  const { rows } = await client.query<{ what: string }>(
    `select 'autovacuum is working on the table (pid ' || a.pid || ')' as what
       from pg_stat_progress_vacuum v join pg_stat_activity a on a.pid = v.pid
      where v.relid = $1 and a.backend_type = 'autovacuum worker'
     union all
     select 'another index build or reindex is running on the table (pid ' || pid || ', ' || command || ')'
       from pg_stat_progress_create_index where relid = $1 and pid <> pg_backend_pid()
     union all
     select 'another maintenance command holds the table (pid ' || l.pid || ', ' || l.mode || ')'
       from pg_locks l where l.relation = $1 and l.granted and l.pid <> pg_backend_pid()
        and l.mode in ('ShareUpdateExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
     limit 1`,
    [tableOid],
  );
  return rows[0]?.what;
}

/** One REINDEX INDEX CONCURRENTLY; a failed one's invalid copy is dropped at once, or kept for the next run. */
async function rebuild(
  ctx: JobContext,
  client: pg.ClientBase,
  c: Candidate,
  lockTimeout: string,
  remainingMs: number,
): Promise<
  | { bytesBefore: number; bytesAfter: number; seconds: number }
  | { error: string; budget?: boolean; kept: { index: string; reason: string }[] }
> {
  const t0 = Date.now();
  const bytesBefore = Number((await client.query(`select pg_relation_size($1::regclass) as b`, [c.oid])).rows[0].b);
  await client.query(`set lock_timeout = '${lockTimeout}'; set statement_timeout = ${Math.floor(remainingMs)}`);
  try {
    await client.query(`reindex index concurrently ${c.index}`);
  } catch (err) {
    const code = (err as { code?: string }).code;
    // The copy it was building stays behind as "<name>_ccnew", invalid: dropped now if it can
    // be; what waits on the same transaction as the rebuild did is kept for the next run. On a
    // session that is gone this fails too: the next run sweeps the leftover, and the rebuild's
    // own error is the one reported.
    const kept: { index: string; reason: string }[] = [];
    try {
      const { rows } = await client.query<{ index: string }>(
        `select quote_ident(n.nspname) || '.' || quote_ident(x.relname) as index
           from pg_class x join pg_namespace n on n.oid = x.relnamespace join pg_index i on i.indexrelid = x.oid
          where not i.indisvalid and i.indrelid = $1 and x.relname ~ '_cc(new|old)[0-9]*$'`,
        [c.tableOid],
      );
      await client.query('reset statement_timeout');
      for (const r of rows) {
        const notNow = await dropLeftover(client, r.index, lockTimeout);
        if (!notNow) continue;
        kept.push({ index: r.index, reason: notNow });
        await ctx.log(`${c.index}: its invalid copy ${r.index} not dropped now (${notNow}); the next run drops it`);
      }
    } catch (cleanupErr) {
      await ctx.log(
        `${c.index}: its invalid copy not dropped now (${(cleanupErr as Error).message}); the next run does`,
      );
      throw err;
    }
    if (code === '55P03') return { error: `lock_timeout (${lockTimeout}) waiting for the table; left as it was`, kept };
    if (code === '57014')
      return { error: 'the time budget ran out during the rebuild; left as it was', budget: true, kept };
    throw err;
  } finally {
    await client.query('reset statement_timeout').catch(() => undefined);
  }
  ctx.signal.throwIfAborted();
  const bytesAfter = Number((await client.query(`select pg_relation_size($1::regclass) as b`, [c.index])).rows[0].b);
  return { bytesBefore, bytesAfter, seconds: (Date.now() - t0) / 1000 };
}

/**
 * DROP INDEX CONCURRENTLY of an invalid leftover under lock_timeout: it waits for the
 * transactions that use the table, as the rebuild did. Why it cannot be dropped now, or
 * undefined once dropped; other errors (a lost session) are thrown.
 */
async function dropLeftover(client: pg.ClientBase, index: string, lockTimeout: string): Promise<string | undefined> {
  await client.query(`set lock_timeout = '${lockTimeout}'`);
  try {
    await client.query(`drop index concurrently if exists ${index}`);
    return undefined;
  } catch (err) {
    if ((err as { code?: string }).code !== '55P03') throw err;
    return `lock_timeout (${lockTimeout}) waiting for the transactions that use the table`;
  }
}

export default job;

/** What an index-maintenance run returns (its result in the run history and the API). */
export type IndexMaintenanceResult = JobResult<typeof job>;
