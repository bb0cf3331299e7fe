// The retention journal: a durable record, in the target database itself, of every
// partition that drop-expired-partitions takes out of its parent. A row is written
// (and committed) before the DETACH, moved on after each step, and closed in the
// same transaction as the DROP (or the re-attach). A run killed at any step leaves an
// open row, and the next run finds the partition through it, even once the partition
// is a plain table that its parent no longer shows.
import type pg from 'pg';

export type JournalState = 'detaching' | 'detached' | 'archived' | 'dropped' | 'reattached';

/** States in which the partition is out of its parent's hands and the job is unfinished. */
export const OPEN_STATES: JournalState[] = ['detaching', 'detached', 'archived'];

export interface JournalEntry {
  id: string;
  parent: string;
  partitionSchema: string;
  partitionName: string;
  /** The partition's bounds as SQL literals of the key type, to re-attach it exactly. */
  boundFrom: string;
  boundTo: string;
  /** Upper bound as an instant, to judge expiry again on resume. */
  upperBound: Date;
  state: JournalState;
  archiveFile: string | null;
  archiveSha256: string | null;
  jobId: string;
  updatedAt: Date;
}

const DDL = `create schema if not exists pgmaint;
create table if not exists pgmaint.retention_journal (
  id bigserial primary key,
  parent text not null,
  partition_schema text not null,
  partition_name text not null,
  bound_from text not null,
  bound_to text not null,
  upper_bound timestamptz not null,
  state text not null check (state in ('detaching', 'detached', 'archived', 'dropped', 'reattached')),
  archive_file text,
  archive_sha256 text,
  job_id text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now());
create unique index if not exists retention_journal_open on pgmaint.retention_journal (partition_schema, partition_name)
  where state in ('detaching', 'detached', 'archived');
delete from pgmaint.retention_journal where state in ('dropped', 'reattached')
  and updated_at < now() - interval '400 days'`;

const COLUMNS = `id::text, parent, partition_schema as "partitionSchema", partition_name as "partitionName",
  bound_from as "boundFrom", bound_to as "boundTo", upper_bound as "upperBound", state,
  archive_file as "archiveFile", archive_sha256 as "archiveSha256", job_id as "jobId", updated_at as "updatedAt"`;

export async function ensureJournal(db: pg.ClientBase | pg.Pool): Promise<void> {
  await db.query(DDL);
}

/** Open entries of one parent (or of every parent), oldest first. */
export async function openEntries(db: pg.ClientBase | pg.Pool, parent?: string): Promise<JournalEntry[]> {
  const exists = await db.query(`select to_regclass('pgmaint.retention_journal') is not null as ok`);
  if (!exists.rows[0].ok) return [];
  const { rows } = await db.query<JournalEntry>(
    `select ${COLUMNS} from pgmaint.retention_journal where state = any($1) and ($2::text is null or parent = $2) ` +
      `order by id`,
    [OPEN_STATES, parent ?? null],
  );
  return rows;
}

/** Written and committed before the DETACH is issued. */
export async function recordDetaching(
  db: pg.ClientBase,
  e: Pick<
    JournalEntry,
    'parent' | 'partitionSchema' | 'partitionName' | 'boundFrom' | 'boundTo' | 'upperBound' | 'jobId'
  >,
): Promise<string> {
  const { rows } = await db.query<{ id: string }>(
    `insert into pgmaint.retention_journal
       (parent, partition_schema, partition_name, bound_from, bound_to, upper_bound, state, job_id)
     values ($1, $2, $3, $4, $5, $6, 'detaching', $7) returning id::text`,
    [e.parent, e.partitionSchema, e.partitionName, e.boundFrom, e.boundTo, e.upperBound, e.jobId],
  );
  return rows[0]!.id;
}

export async function setState(
  db: pg.ClientBase,
  id: string,
  state: JournalState,
  jobId: string,
  archive?: { file: string; sha256: string },
): Promise<void> {
  await db.query(
    `update pgmaint.retention_journal set state = $2, job_id = $3, updated_at = now(),
            archive_file = coalesce($4, archive_file), archive_sha256 = coalesce($5, archive_sha256) where id = $1`,
    [id, state, jobId, archive?.file ?? null, archive?.sha256 ?? null],
  );
}

/** Where an open entry's partition stands in the catalog now. */
export type CatalogPlace = 'missing' | 'attached' | 'detach-pending' | 'detached';

export async function catalogPlace(
  db: pg.ClientBase,
  e: Pick<JournalEntry, 'partitionSchema' | 'partitionName'>,
): Promise<CatalogPlace> {
  const { rows } = await db.query<{ oid: number | null; pending: boolean | null }>(
    `select c.oid, i.inhdetachpending as pending
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       left join pg_inherits i on i.inhrelid = c.oid
      where n.nspname = $1 and c.relname = $2`,
    [e.partitionSchema, e.partitionName],
  );
  const r = rows[0];
  if (!r) return 'missing';
  if (r.pending === null) return 'detached';
  return r.pending ? 'detach-pending' : 'attached';
}
