// integrity-check: looks for corruption with amcheck, reading only. Each btree index
// gets bt_index_check; each table gets verify_heapam where the role may run it (it is
// granted to superusers by default), else the result says it was left out. By default
// only the tables written since their last clean check (pg_stat counters), all of them
// with `full` (the weekly schedule). A corrupt page fails the job, naming the relation
// and the block, and the `corruption` alert fires (critical). A page that cannot even be
// read (a garbled header, a checksum failure: XX001) is a finding like amcheck's, and
// the check goes on past it and with the other relations. Within a time budget: what is
// left is checked first next time. Never zero_damaged_pages or ignore_checksum_failure.
import type pg from 'pg';
import { z } from 'zod';
import { schemaName, requireExtension } from '../src/core/sql.ts';
import { CorruptionError, GovernorDeferredError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
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
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
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
  /** The error's SQLSTATE when reading the relation failed; null for what amcheck reports as a row. */
  sqlstate: string | null;
  message: string;
}

const job = defineJob({
  name: 'integrity-check',
  description:
    'amcheck: bt_index_check of btree indexes and verify_heapam of tables (where permitted), the tables written ' +
    'since their last check or all of them; reads only; corruption fails the job naming relation and block.',
  payload,
  defaults: { attempts: 1, backoffMs: 60_000, timeoutMs: 12 * 3_600_000, concurrency: 1, heavy: true },
  deduplicate: true,
  async handler(ctx, p) {
    const deadline = Date.now() + p.budgetSeconds * 1000;
    const { tables, heapAllowed } = await ctx.withClient(async (client) => {
      await requireExtension(client, 'amcheck');
      await client.query(STATE);
      const heapAllowed =
        p.heap && (await mayRun(client, 'verify_heapam(regclass,boolean,boolean,text,bigint,bigint)'));
      return { tables: await chooseTables(client, p), heapAllowed };
    });
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
      // A unit: one relation (a table with its indexes); it only reads, so a standby's lag does not hold it.
      // Each takes a session of its own: a run the governor holds between relations keeps none.
      const deferred = await ctx.governor.gate(`check ${t.relation}`, { readOnly: true, deadline }).then(
        () => undefined,
        (err: unknown) => {
          if (err instanceof GovernorDeferredError) return err.message;
          throw err;
        },
      );
      if (deferred) {
        left.push(...tables.slice(n).map((x) => x.relation));
        await ctx.log(`${deferred}; left for the next run: ${left.length} tables`);
        break;
      }
      const remaining = deadline - Date.now();
      if (remaining < 1000) {
        left.push(...tables.slice(n).map((x) => x.relation));
        await ctx.log(`budget of ${p.budgetSeconds}s spent; left for the next run: ${left.length} tables`);
        break;
      }
      await ctx.progress(5 + (90 * n) / tables.length, `checking ${t.relation}`);
      const found = await ctx.withClient(
        async (client) => {
          const found = await checkTable(client, t, heapAllowed, remaining);
          if (Array.isArray(found) && !found.length)
            await client.query(
              `insert into pgmaint.integrity_checked values ($1, $2, now(), $3)
               on conflict (relid) do update set relation = excluded.relation, checked_at = now(),
                 writes = excluded.writes`,
              [t.relid, t.relation, t.writes],
            );
          return found;
        },
        { reset: 'reset statement_timeout' },
      );
      if (found === 'budget') {
        left.push(...tables.slice(n).map((x) => x.relation));
        break;
      }
      if (found === 'dropped') {
        await ctx.log(`${t.relation} was dropped while the check ran; not checked`);
        continue;
      }
      indexes += t.indexes.length;
      findings.push(...found);
      checked.push(t.relation);
      for (const f of found) await ctx.log(`CORRUPTION in ${findingText(f)}`);
    }
    if (findings.length) {
      const first = findings.slice(0, 5).map(findingText);
      throw new CorruptionError(
        `corruption found in ${new Set(findings.map((f) => f.relation)).size} relation(s): ${first.join('; ')}`,
      );
    }
    return { full: p.full, heapChecked: heapAllowed, tables: checked.length, indexes, checked, left, findings };
  },
});

const blockText = (f: Finding) => (f.block === null ? '' : ` block ${f.block}`);
const findingText = (f: Finding) =>
  `${f.relation}${blockText(f)}: ${f.message}${f.sqlstate ? ` (SQLSTATE ${f.sqlstate})` : ''}`;

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

/**
 * What reading a damaged relation raises: data_corrupted (an invalid page, a checksum failure, a
 * short read), index_corrupted, internal_error (what amcheck and garbled pages raise), io_error.
 */
const READ_ERRORS = new Set(['XX001', 'XX002', 'XX000', '58030']);

interface ReadError {
  sqlstate: string;
  message: string;
  block: number | null;
  /** The file named in the message ("base/16385/16518"), without a segment number. */
  file: string | null;
}

/** The table's findings; 'budget' when the time ran out in the middle; 'dropped' when it went meanwhile. */
async function checkTable(
  client: pg.ClientBase,
  t: Table,
  heap: boolean,
  remainingMs: number,
): Promise<Finding[] | 'budget' | 'dropped'> {
  const findings: Finding[] = [];
  // A checksum failure comes as a WARNING (its checksums) before the ERROR (the block).
  const warnings: string[] = [];
  const onNotice = (n: { severity?: string; message?: string }) => {
    if (n.severity === 'WARNING' && n.message) warnings.push(n.message);
  };
  client.on('notice', onNotice);
  /** Runs fn; a read error is returned, anything else thrown. */
  const reading = async (fn: () => Promise<void>): Promise<ReadError | undefined> => {
    warnings.length = 0;
    try {
      await fn();
      return undefined;
    } catch (err) {
      const e = err as { code?: string; message: string };
      if (!e.code || !READ_ERRORS.has(e.code)) throw err;
      const at = /block (\d+)(?:(?: of relation| in file) "?([^\s":]+))?/.exec(e.message);
      const message = [e.message, ...warnings.filter((w) => /checksum/.test(w))].join('; ');
      return {
        sqlstate: e.code,
        message,
        block: at ? Number(at[1]) : null,
        file: at?.[2]?.replace(/\.\d+$/, '') ?? null,
      };
    }
  };
  const exists = async (oid: number) =>
    ((await client.query(`select 1 from pg_class where oid = $1`, [oid])).rowCount ?? 0) > 0;
  await client.query(`set statement_timeout = ${Math.floor(remainingMs)}`);
  try {
    if (heap) {
      const { rows } = await client.query<{ file: string; blocks: number }>(
        `select pg_relation_filepath($1::regclass) as file,
                (pg_relation_size($1::regclass) / current_setting('block_size')::int)::int as blocks`,
        [t.relid],
      );
      if (!rows[0]?.file) return 'dropped';
      const verify = (from: number, to: number | null) =>
        reading(async () => {
          const { rows: found } = await client.query<{ blkno: string; offnum: number | null; msg: string }>(
            `select blkno::text, offnum, msg
               from verify_heapam($1::regclass, on_error_stop := false, startblock := $2, endblock := $3) limit 100`,
            [t.relid, from, to],
          );
          for (const r of found)
            findings.push({
              relation: t.relation,
              block: Number(r.blkno),
              sqlstate: null,
              message: r.offnum ? `offset ${r.offnum}: ${r.msg}` : r.msg,
            });
        });
      // verify_heapam stops at a page it cannot read: it is a finding, the pages before it are
      // checked again up to it and the check goes on after it. A page of another file (its
      // TOAST table) ends the heap check of this table.
      for (let from = 0; from < rows[0].blocks && findings.length < 100; ) {
        const failed = await verify(from, null);
        if (!failed) break;
        if (!(await exists(t.relid))) return 'dropped';
        const ownPage = failed.block !== null && failed.file === rows[0].file && failed.block >= from;
        const before = ownPage && failed.block! > from ? await verify(from, failed.block! - 1) : undefined;
        if (before) findings.push({ relation: t.relation, ...pick(before) }); // read before, not now
        findings.push({ relation: t.relation, ...pick(failed) });
        if (!ownPage) break;
        from = failed.block! + 1;
      }
    }
    for (const i of t.indexes) {
      const failed = await reading(async () => {
        await client.query(`select bt_index_check($1::regclass, false)`, [i.oid]);
      });
      if (!failed) continue;
      if (!(await exists(i.oid))) continue; // dropped meanwhile
      findings.push({ relation: i.name, ...pick(failed) });
    }
  } catch (err) {
    if ((err as { code?: string }).code === '57014') return 'budget';
    throw err;
  } finally {
    client.removeListener('notice', onNotice);
    await client.query('reset statement_timeout').catch(() => undefined);
  }
  return findings;
}

const pick = ({ block, sqlstate, message }: ReadError) => ({ block, sqlstate, message });

export default job;

/** What an integrity-check run returns (its result in the run history and the API). */
export type IntegrityCheckResult = JobResult<typeof job>;
