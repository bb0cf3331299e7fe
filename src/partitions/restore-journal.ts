// The restore journal: a durable record, in the target database, of every partition
// that restore-partition brings back. A row is written (and committed) before pg_restore
// creates the table, moved on once the table is restored, and closed in the transaction
// that attaches the table (with its hold) or renames it to its standalone name. A run
// killed at any step leaves an open row that the next run of the parent finishes: the
// table is restored again if it is absent, counted against the manifest, and only then
// attached. A table whose rows differ is dropped and the row closed as failed.
import type pg from 'pg';

export type RestoreState = 'restoring' | 'restored' | 'done' | 'failed';
export const OPEN_RESTORES: RestoreState[] = ['restoring', 'restored'];

export interface RestoreEntry {
  id: string;
  parent: string;
  partitionSchema: string;
  partitionName: string;
  archiveFile: string;
  archiveSha256: string;
  expectedRows: number;
  mode: 'attach' | 'standalone';
  /** standalone: the table's final name (schema.table). */
  standaloneAs: string | null;
  holdUntil: Date | null;
  boundFrom: string | null;
  boundTo: string | null;
  state: RestoreState;
  jobId: string;
}

const DDL = `create schema if not exists pgmaint;
create table if not exists pgmaint.restore_journal (
  id bigserial primary key,
  parent text not null,
  partition_schema text not null,
  partition_name text not null,
  archive_file text not null,
  archive_sha256 text not null,
  expected_rows bigint not null,
  mode text not null check (mode in ('attach', 'standalone')),
  standalone_as text,
  hold_until timestamptz,
  bound_from text,
  bound_to text,
  state text not null check (state in ('restoring', 'restored', 'done', 'failed')),
  job_id text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now());
create unique index if not exists restore_journal_open on pgmaint.restore_journal (partition_schema, partition_name)
  where state in ('restoring', 'restored')`;

const COLUMNS = `id::text, parent, partition_schema as "partitionSchema", partition_name as "partitionName",
  archive_file as "archiveFile", archive_sha256 as "archiveSha256", expected_rows::int as "expectedRows", mode,
  standalone_as as "standaloneAs", hold_until as "holdUntil", bound_from as "boundFrom", bound_to as "boundTo",
  state, job_id as "jobId"`;

export async function ensureRestoreJournal(db: pg.ClientBase | pg.Pool): Promise<void> {
  await db.query(DDL);
}

/** Open restores of a parent, oldest first. */
export async function openRestores(db: pg.ClientBase | pg.Pool, parent: string): Promise<RestoreEntry[]> {
  const { rows } = await db.query<RestoreEntry>(
    `select ${COLUMNS} from pgmaint.restore_journal where state = any($1) and parent = $2 order by id`,
    [OPEN_RESTORES, parent],
  );
  return rows;
}

/** Written and committed before pg_restore creates the table. */
export async function recordRestoring(db: pg.ClientBase, e: Omit<RestoreEntry, 'id' | 'state'>): Promise<string> {
  const { rows } = await db.query<{ id: string }>(
    `insert into pgmaint.restore_journal (parent, partition_schema, partition_name, archive_file, archive_sha256,
       expected_rows, mode, standalone_as, hold_until, bound_from, bound_to, state, job_id)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'restoring', $12) returning id::text`,
    [
      e.parent,
      e.partitionSchema,
      e.partitionName,
      e.archiveFile,
      e.archiveSha256,
      e.expectedRows,
      e.mode,
      e.standaloneAs,
      e.holdUntil,
      e.boundFrom,
      e.boundTo,
      e.jobId,
    ],
  );
  return rows[0]!.id;
}

export async function setRestoreState(db: pg.ClientBase, id: string, state: RestoreState, jobId: string) {
  await db.query('update pgmaint.restore_journal set state = $2, job_id = $3, updated_at = now() where id = $1', [
    id,
    state,
    jobId,
  ]);
}

/** The bounds a retention run recorded when it took the partition out (archives made before bounds were recorded). */
export async function droppedBounds(
  db: pg.ClientBase,
  schema: string,
  name: string,
): Promise<{ from: string; to: string } | undefined> {
  const exists = await db.query(`select to_regclass('pgmaint.retention_journal') is not null as ok`);
  if (!exists.rows[0].ok) return undefined;
  const { rows } = await db.query<{ from: string; to: string }>(
    `select bound_from as "from", bound_to as "to" from pgmaint.retention_journal
      where partition_schema = $1 and partition_name = $2 and state = 'dropped' order by id desc limit 1`,
    [schema, name],
  );
  return rows[0];
}
