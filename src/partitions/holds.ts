// Holds on partitions: a partition that restore-partition attached again for a while
// (an auditor's month) carries a hold until a date, and drop-expired-partitions leaves
// it alone until then, whatever its retention says. Once the hold ends, retention takes
// it again as it would any expired partition. Holds live in the target database, beside
// the retention journal, and are written in the transaction that attaches the partition.
import type pg from 'pg';

const DDL = `create schema if not exists pgmaint;
create table if not exists pgmaint.partition_holds (
  partition_schema text not null,
  partition_name text not null,
  parent text not null,
  hold_until timestamptz not null,
  job_id text not null,
  created_at timestamptz not null default now(),
  primary key (partition_schema, partition_name))`;

export async function ensureHolds(db: pg.ClientBase | pg.Pool): Promise<void> {
  await db.query(DDL);
}

/** Records (or moves) a hold; call it in the transaction that attaches the partition. */
export async function recordHold(
  db: pg.ClientBase,
  h: { parent: string; schema: string; name: string; until: string; jobId: string },
): Promise<void> {
  await db.query(
    `insert into pgmaint.partition_holds (partition_schema, partition_name, parent, hold_until, job_id)
     values ($1, $2, $3, $4, $5)
     on conflict (partition_schema, partition_name) do update
       set parent = excluded.parent, hold_until = excluded.hold_until, job_id = excluded.job_id, created_at = now()`,
    [h.schema, h.name, h.parent, h.until, h.jobId],
  );
}

/** Partitions of `parent` held at `now` ("schema.name" → until, ISO). */
export async function heldPartitions(
  db: pg.ClientBase | pg.Pool,
  parent: string,
  now: Date,
): Promise<Map<string, string>> {
  const exists = await db.query(`select to_regclass('pgmaint.partition_holds') is not null as ok`);
  if (!exists.rows[0].ok) return new Map();
  const { rows } = await db.query<{ key: string; until: Date }>(
    `select partition_schema || '.' || partition_name as key, hold_until as until
       from pgmaint.partition_holds where parent = $1 and hold_until > $2`,
    [parent, now],
  );
  return new Map(rows.map((r) => [r.key, r.until.toISOString()]));
}
