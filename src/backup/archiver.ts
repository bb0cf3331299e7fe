// What the live server says of its own archiving, whatever the engine that stores the WAL.
import type pg from 'pg';

/** WAL segments waiting for archive_command (.ready files); null when the role may not list them
 * (needs pg_monitor or superuser). */
export async function readyBacklog(pool: pg.Pool): Promise<number | null> {
  return pool
    .query<{ n: string }>(`select count(*) as n from pg_ls_archive_statusdir() where name like '%.ready'`)
    .then(
      (r) => Number(r.rows[0]!.n),
      () => null,
    );
}
