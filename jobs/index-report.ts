// index-report: the indexes worth a look, read from the catalog and the statistics,
// never changed. Three kinds:
// - unused: no scan since the statistics were reset (with the reset time and size),
//   leaving out indexes that enforce a constraint (primary key, unique, exclusion) and
//   those of partitions (an old partition is rightly never read);
//   statistics are per node, so a standby's reads are not counted here;
// - duplicate or overlapping: the same table, the same predicate and expressions, and
//   key columns equal to another index's or a prefix of them (a unique index is never
//   called redundant, since it enforces something its longer twin does not);
// - foreign keys whose columns lead no index of the referencing table: every delete
//   or key update on the referenced table scans the referencing one.
// pgmaint's own tables (the `pgmaint` schema: run history, journals, drill markers) are
// left out unless `schemas` names that schema: their indexes are pgmaint's to choose.
import { z } from 'zod';
import { schemaName } from '../src/core/sql.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** Schemas to report on; default all but the system ones and pgmaint's own. */
  schemas: z.array(schemaName).optional(),
  /** Unused indexes smaller than this are left out (tiny ones cost nothing). */
  minUnusedBytes: z.number().int().min(0).default(0),
});

interface IndexRow {
  schema: string;
  table: string;
  index: string;
  bytes: number;
  scans: number;
  constraint: boolean;
  unique: boolean;
  valid: boolean;
  keys: string;
  predicate: string | null;
  expressions: string | null;
  definition: string;
  /** The index of a partitioned table (no scans of its own: its partitions' indexes have them). */
  partitioned: boolean;
  /** An index of one partition: the parent's index reports for all of them. */
  onPartition: boolean;
}

/** Where pgmaint keeps its own tables on a target. */
const OWN_SCHEMA = 'pgmaint';

const INDEXES = `
  select n.nspname as schema, t.relname as "table", c.relname as index, pg_relation_size(c.oid)::float8 as bytes,
         coalesce(s.idx_scan, 0)::float8 as scans, con.oid is not null as constraint, i.indisunique as unique,
         i.indisvalid as valid, i.indkey::text || '/' || i.indclass::text || '/' || i.indcollation::text || '/' ||
           i.indoption::text as keys,
         pg_get_expr(i.indpred, i.indrelid) as predicate, pg_get_expr(i.indexprs, i.indrelid) as expressions,
         pg_get_indexdef(c.oid) as definition, c.relkind = 'I' as partitioned, t.relispartition as "onPartition"
    from pg_index i
    join pg_class c on c.oid = i.indexrelid
    join pg_class t on t.oid = i.indrelid
    join pg_namespace n on n.oid = t.relnamespace
    left join pg_stat_all_indexes s on s.indexrelid = i.indexrelid
    left join pg_constraint con on con.conindid = i.indexrelid and con.contype in ('p', 'u', 'x')
   where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname !~ '^pg_temp'
     and ($1::text[] is null and n.nspname <> '${OWN_SCHEMA}' or n.nspname = any($1))
   order by 1, 2, 3`;

const FOREIGN_KEYS = `
  select n.nspname as schema, t.relname as "table", con.conname as constraint,
         (select string_agg(quote_ident(a.attname), ', ' order by k.ord) from unnest(con.conkey) with ordinality
            k(attnum, ord) join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum) as columns,
         con.confrelid::regclass::text as "references"
    from pg_constraint con
    join pg_class t on t.oid = con.conrelid
    join pg_namespace n on n.oid = t.relnamespace
   where con.contype = 'f' and ($1::text[] is null and n.nspname <> '${OWN_SCHEMA}' or n.nspname = any($1))
     -- a partition's copy of its parent's key is reported once, on the parent
     and con.conparentid = 0
     and not exists (
       select 1 from pg_index i
        where i.indrelid = con.conrelid and i.indpred is null
          and (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey
          and (i.indkey::int2[])[0:cardinality(con.conkey) - 1] <@ con.conkey)
   order by 1, 2, 3`;

const job = defineJob({
  name: 'index-report',
  description:
    'Lists unused indexes (no scan since the statistics reset), duplicate or overlapping ones, and foreign keys ' +
    'with no supporting index. Reads only; drops nothing.',
  payload,
  defaults: { attempts: 2, backoffMs: 30_000, timeoutMs: 30 * 60_000, concurrency: 1 },
  deduplicate: true,
  async handler(ctx, p) {
    return ctx.withClient(
      async (client) => {
        await client.query(`set statement_timeout = '5min'`);
        await ctx.progress(5, 'reading indexes and their statistics');
        const schemas = p.schemas ?? null;
        // One session runs one query at a time: these go one after another.
        const { rows: indexes } = await client.query<IndexRow>(INDEXES, [schemas]);
        const { rows: fks } = await client.query<{
          schema: string;
          table: string;
          constraint: string;
          columns: string;
          references: string;
        }>(FOREIGN_KEYS, [schemas]);
        const { rows: reset } = await client.query<{ reset: Date | null; standby: boolean }>(
          `select stats_reset as reset, pg_is_in_recovery() as standby from pg_stat_database
            where datname = current_database()`,
        );
        await ctx.progress(60, `${indexes.length} indexes, ${fks.length} foreign keys without an index`);

        const unused = indexes
          .filter(
            (i) =>
              i.scans === 0 &&
              !i.constraint &&
              i.valid &&
              !i.partitioned &&
              !i.onPartition &&
              i.bytes >= p.minUnusedBytes,
          )
          .map((i) => ({ index: `${i.schema}.${i.index}`, table: `${i.schema}.${i.table}`, bytes: i.bytes }));

        // Same table, predicate and expressions; one's keys equal to, or a prefix of, the other's.
        const byTable = new Map<string, IndexRow[]>();
        for (const i of indexes.filter((x) => x.valid && !x.onPartition)) {
          const k = `${i.schema}.${i.table}`;
          byTable.set(k, [...(byTable.get(k) ?? []), i]);
        }
        const overlapping: {
          index: string;
          coveredBy: string;
          kind: 'duplicate' | 'prefix';
          bytes: number;
          definition: string;
        }[] = [];
        for (const list of byTable.values()) {
          for (const a of list) {
            for (const b of list) {
              if (a === b || a.unique || a.predicate !== b.predicate || a.expressions !== b.expressions) continue;
              const [ka, kb] = [columnsOf(a.keys), columnsOf(b.keys)];
              const prefix = ka.length <= kb.length && ka.every((c, n) => c === kb[n]);
              if (!prefix) continue;
              const duplicate = ka.length === kb.length;
              // Of two equal non-unique indexes, name the later one (by name) as the duplicate.
              if (duplicate && !b.unique && a.index < b.index) continue;
              overlapping.push({
                index: `${a.schema}.${a.index}`,
                coveredBy: `${b.schema}.${b.index}`,
                kind: duplicate ? 'duplicate' : 'prefix',
                bytes: a.bytes,
                definition: a.definition,
              });
            }
          }
        }
        const unindexedForeignKeys = fks.map((f) => ({
          constraint: f.constraint,
          table: `${f.schema}.${f.table}`,
          columns: f.columns,
          references: f.references,
        }));
        const statsReset = reset[0]?.reset ? new Date(reset[0].reset).toISOString() : null;
        const warning =
          `scan counts are this node's since ${statsReset ?? 'the cluster was created'}: reads on a standby are ` +
          `not counted, and an index used only by a monthly report may look unused`;
        for (const u of unused) await ctx.log(`unused: ${u.index} on ${u.table}, ${u.bytes} bytes`);
        for (const o of overlapping) await ctx.log(`${o.kind}: ${o.index} is covered by ${o.coveredBy}`);
        for (const f of unindexedForeignKeys)
          await ctx.log(`foreign key without an index: ${f.constraint} on ${f.table} (${f.columns}) → ${f.references}`);
        await ctx.log(warning);
        return {
          statsReset,
          standby: reset[0]?.standby ?? false,
          warning,
          indexes: indexes.length,
          unused,
          unusedBytes: unused.reduce((n, u) => n + u.bytes, 0),
          overlapping,
          unindexedForeignKeys,
        };
      },
      { reset: 'reset statement_timeout' },
    );
  },
});

/** The key columns, operator classes, collations and options of an index, column by column. */
function columnsOf(keys: string): string[] {
  const [cols, classes, collations, options] = keys.split('/').map((x) => x.split(' '));
  return cols!.map((c, i) => `${c}:${classes![i]}:${collations![i]}:${options![i]}`);
}

export default job;

/** What an index-report run returns (its result in the run history, the API and /metrics). */
export type IndexReportResult = JobResult<typeof job>;
