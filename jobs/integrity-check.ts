// integrity-check: looks for corruption with amcheck, reading only. Each btree index
// gets bt_index_check; each table gets verify_heapam where the role may run it (it is
// granted to superusers by default), else the result says it was left out. By default
// only the tables written since their last clean check (pg_stat counters), all of them
// with `full` (the weekly schedule). A corrupt page fails the job, naming the relation
// and the block, and the `corruption` alert fires (critical). Within a time budget:
// what is left is checked first next time.
import type pg from 'pg';
import { z } from 'zod';
import { schemaName, requireExtension } from '../src/core/sql.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** Schemas to check; default all but the system ones. */
  schemas: z.array(schemaName).optional(),
  /** Every table, not only those written since their last clean check. */
  full: z.boolean().default(false),
  /** verify_heapam on the tables as well as bt_index_check on their indexes. */
  heap: z.boolean().default(true),
  /** Stop starting tables after this long; a running check is cancelled at it. */
  budgetSeconds: z.number().int().min(1).max(86_400).default(3600),
});

const STATE = `
create schema if not exists pgmaint;
create table if not exists pgmaint.integrity_checked (
  relid oid primary key, relation text not null, checked_at timestamptz not null, writes bigint not null
);`;

interface Table {
  relid: number;
  relation: string;
  writes: number;
  indexes: { oid: number; name: string }[];
}

interface Finding {
  relation: string;
  block: number | null;
  message: string;
}

const job = defineJob({
  name: 'integrity-check',
  description:
    'amcheck: bt_index_check of btree indexes and verify_heapam of tables (where permitted), the tables written ' +
    'since their last check or all of them; reads only; corruption fails the job naming relation and block.',
  payload,
  defaults: { attempts: 1, backoffMs: 60_000, timeoutMs: 12 * 3_600_000, concurrency: 1 },
  deduplicate: true,
  async handler(ctx, p) {
    const deadline = Date.now() + p.budgetSeconds * 1000;
    const client = await ctx.pool.connect();
    try {
      await requireExtension(client, 'amcheck');
      await client.query(STATE);
      const heapAllowed =
        p.heap && (await mayRun(client, 'verify_heapam(regclass,boolean,boolean,text,bigint,bigint)'));
      const tables = await chooseTables(client, p);
      await ctx.log(
        `${tables.length} tables to check${p.full ? ' (full)' : ' (written since their last clean check)'}; ` +
          `heap check ${heapAllowed ? 'on' : p.heap ? 'left out: this role may not run verify_heapam' : 'off'}`,
      );
      const findings: Finding[] = [];
      const checked: string[] = [];
      const left: string[] = [];
      let indexes = 0;
      for (const [n, t] of tables.entries()) {
        ctx.signal.throwIfAborted();
        const remaining = deadline - Date.now();
        if (remaining < 1000) {
          left.push(...tables.slice(n).map((x) => x.relation));
          await ctx.log(`budget of ${p.budgetSeconds}s spent; left for the next run: ${left.length} tables`);
          break;
        }
        await ctx.progress(5 + (90 * n) / tables.length, `checking ${t.relation}`);
        const found = await checkTable(client, t, heapAllowed, remaining);
        indexes += t.indexes.length;
        if (found === 'budget') {
          left.push(...tables.slice(n).map((x) => x.relation));
          break;
        }
        findings.push(...found);
        checked.push(t.relation);
        for (const f of found) await ctx.log(`CORRUPTION in ${f.relation}${blockText(f)}: ${f.message}`);
        if (!found.length)
          await client.query(
            `insert into pgmaint.integrity_checked values ($1, $2, now(), $3)
             on conflict (relid) do update set relation = excluded.relation, checked_at = now(),
               writes = excluded.writes`,
            [t.relid, t.relation, t.writes],
          );
      }
      if (findings.length) {
        const first = findings.slice(0, 5).map((f) => `${f.relation}${blockText(f)}: ${f.message}`);
        throw new PermanentJobError(
          `corruption found in ${new Set(findings.map((f) => f.relation)).size} relation(s): ${first.join('; ')}`,
          'CORRUPTION',
        );
      }
      return { full: p.full, heapChecked: heapAllowed, tables: checked.length, indexes, checked, left, findings };
    } finally {
      await client.query('reset statement_timeout').catch(() => undefined);
      client.release();
    }
  },
});

const blockText = (f: Finding) => (f.block === null ? '' : ` block ${f.block}`);

async function mayRun(client: pg.ClientBase, fn: string): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>(
    `select coalesce(has_function_privilege(to_regprocedure($1), 'execute'), false) as ok`,
    [fn],
  );
  return rows[0]!.ok;
}

async function chooseTables(client: pg.ClientBase, p: z.output<typeof payload>): Promise<Table[]> {
  const { rows } = await client.query<Table>(
    `select t.oid as relid, quote_ident(n.nspname) || '.' || quote_ident(t.relname) as relation,
            coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)::float8 as writes,
            coalesce((select json_agg(json_build_object('oid', i.indexrelid,
                        'name', quote_ident(n.nspname) || '.' || quote_ident(ic.relname)))
                        from pg_index i join pg_class ic on ic.oid = i.indexrelid join pg_am am on am.oid = ic.relam
                       where i.indrelid = t.oid and am.amname = 'btree' and i.indisvalid and i.indisready), '[]')
              as indexes
       from pg_class t join pg_namespace n on n.oid = t.relnamespace
       left join pg_stat_all_tables s on s.relid = t.oid
       left join pgmaint.integrity_checked c on c.relid = t.oid
      where t.relkind in ('r', 'm') and t.relpersistence <> 't'
        and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname !~ '^pg_temp'
        and (n.nspname <> 'pgmaint' or t.relname <> 'integrity_checked')
        and ($1::text[] is null or n.nspname = any($1))
        and ($2 or c.relid is null or c.writes <> coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0))
      -- never checked first, then the longest ago
      order by c.checked_at nulls first, pg_relation_size(t.oid) desc`,
    [p.schemas ?? null, p.full],
  );
  return rows;
}

/** The table's findings, or 'budget' when the time ran out in the middle. */
async function checkTable(
  client: pg.ClientBase,
  t: Table,
  heap: boolean,
  remainingMs: number,
): Promise<Finding[] | 'budget'> {
  const findings: Finding[] = [];
  await client.query(`set statement_timeout = ${Math.floor(remainingMs)}`);
  try {
    if (heap) {
      const { rows } = await client.query<{ blkno: string; offnum: number | null; msg: string }>(
        `select blkno::text, offnum, msg from verify_heapam($1::regclass, on_error_stop := false) limit 100`,
        [t.relid],
      );
      for (const r of rows)
        findings.push({
          relation: t.relation,
          block: Number(r.blkno),
          message: r.offnum ? `offset ${r.offnum}: ${r.msg}` : r.msg,
        });
    }
    for (const i of t.indexes) {
      try {
        await client.query(`select bt_index_check($1::regclass, false)`, [i.oid]);
      } catch (err) {
        const e = err as { code?: string; message: string };
        if (e.code === '57014') throw err;
        // XX002 index_corrupted, XX001 data_corrupted, and what a damaged page raises on read.
        if (!e.code || !/^(XX00[12]|XX000)$/.test(e.code)) throw err;
        const block = /block (\d+)/.exec(e.message)?.[1];
        findings.push({ relation: i.name, block: block === undefined ? null : Number(block), message: e.message });
      }
    }
  } catch (err) {
    if ((err as { code?: string }).code === '57014') return 'budget';
    throw err;
  } finally {
    await client.query('reset statement_timeout').catch(() => undefined);
  }
  return findings;
}

export default job;

/** What an integrity-check run returns (its result in the run history and the API). */
export type IntegrityCheckResult = JobResult<typeof job>;
