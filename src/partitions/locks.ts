// The advisory lock per partitioned parent that a partition job holds while it works on it.
import type pg from 'pg';

/** The skip reason when withParentLock finds the parent taken. */
export const PARENT_LOCKED = 'another run holds this parent (advisory lock); skipped';

/**
 * Runs fn on one connection holding a session advisory lock for the parent, so two
 * runs (any job, any worker) never interleave on it; 'locked' when another holds it.
 * Session TimeZone is UTC so the catalog prints bounds in UTC.
 */
export async function withParentLock(
  pool: pg.Pool,
  table: string,
  fn: (client: pg.PoolClient) => Promise<void>,
): Promise<'done' | 'locked'> {
  const client = await pool.connect();
  const key = `pgmaint:partitions:${table}`;
  let zone: string | undefined;
  try {
    const { rows } = await client.query<{ ok: boolean; zone: string }>(
      `select current_setting('TimeZone') as zone, set_config('TimeZone', 'UTC', false) is not null and ` +
        `pg_try_advisory_lock(hashtext($1)) as ok`,
      [key],
    );
    zone = rows[0]!.zone;
    if (!rows[0]!.ok) return 'locked';
    try {
      await fn(client);
      return 'done';
    } finally {
      await client
        .query('select pg_advisory_unlock(hashtext($1)), set_config($2, $3, false)', [key, 'TimeZone', zone])
        .catch(() => undefined);
      zone = undefined;
    }
  } finally {
    if (zone) await client.query(`select set_config('TimeZone', $1, false)`, [zone]).catch(() => undefined);
    client.release();
  }
}
