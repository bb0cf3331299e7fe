// The invalid "_ccnew"/"_ccold" indexes an interrupted or blocked REINDEX CONCURRENTLY left
// on a target: what the next index-maintenance run drops. Read from the target's catalog,
// so both what a run could not drop (a transaction held the table) and what a killed run
// left are counted, until they are gone. Only targets index-maintenance has run on.
import type { Runtime } from '../runner/runtime.ts';
import { withinTargetDeadline } from './target-deadline.ts';

export interface IndexLeftoverHealth {
  target: string;
  /** schema.index of each leftover. */
  indexes: string[];
  error?: string;
}

// A rebuild running now has an invalid "_ccnew" until it ends: not a leftover.
const LEFTOVERS = `
  select quote_ident(n.nspname) || '.' || quote_ident(c.relname) as index
    from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
   where not i.indisvalid and c.relname ~ '_cc(new|old)[0-9]*$'
     and n.nspname not in ('pg_catalog', 'information_schema')
     and not exists (select 1 from pg_stat_progress_create_index p where p.relid = i.indrelid)
   order by 1`;

/** The leftovers on one target (a reading asks for those index-maintenance has run on); never throws. */
export async function readTargetLeftovers(
  rt: Runtime,
  target: string,
  deadlineMs: number,
): Promise<IndexLeftoverHealth> {
  const read = async () => {
    const client = await rt.connections.pool(target, 'monitor').connect();
    try {
      await client.query(`set statement_timeout = '10s'`);
      const { rows } = await client.query<{ index: string }>(LEFTOVERS);
      return { target, indexes: rows.map((r) => r.index) };
    } finally {
      client.release();
    }
  };
  try {
    return await withinTargetDeadline(read(), target, deadlineMs);
  } catch (err) {
    return { target, indexes: [], error: (err as Error).message };
  }
}
