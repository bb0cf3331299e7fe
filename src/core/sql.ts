// SQL identifiers and literals: the one validator of names that come from the config
// file or a payload, and the quoting every statement built from them goes through.
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from './errors.ts';

const IDENT = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/;

/** "schema.table" with plain identifiers; anything else (quotes, semicolons) is refused. */
export const qualifiedName = z.string().refine((v) => {
  const parts = v.split('.');
  return parts.length === 2 && parts.every((p) => IDENT.test(p));
}, 'must be schema.table with plain identifiers (letters, digits, _ and $)');

export const columnName = z.string().regex(IDENT, 'must be a plain identifier (letters, digits, _ and $)');

export const schemaName = z.string().regex(IDENT, 'must be a plain schema name');

/** A lock_timeout setting ("2s", "500ms") that goes into SET: nothing else passes. */
export const lockTimeoutSetting = (defaultValue: `${number}s`) =>
  z
    .string()
    .regex(/^\d+(ms|s)$/, `must look like "${defaultValue}" or "500ms"`)
    .default(defaultValue);

/** The database's name and the extensions created in it, with their versions. */
export async function extensionsOf(
  client: pg.ClientBase,
): Promise<{ database: string; versions: Map<string, string> }> {
  const { rows } = await client.query<{ database: string; name: string | null; version: string | null }>(
    `select current_database() as database, e.extname as name, e.extversion as version
       from (select 1) one left join pg_extension e on true`,
  );
  const versions = new Map(rows.flatMap((r) => (r.name ? [[r.name, r.version!] as const] : [])));
  return { database: rows[0]!.database, versions };
}

/** The refusal (no retry) of a job whose extension is missing, naming the database and the command. */
export function missingExtension(database: string, name: string, hint = ''): PermanentJobError {
  return new PermanentJobError(
    `${name} is not installed in database ${database}: create extension ${name}${hint}`,
    'EXTENSION',
  );
}

/** The extension's version, or the refusal when it is missing. */
export async function requireExtension(client: pg.ClientBase, name: string): Promise<string> {
  const { database, versions } = await extensionsOf(client);
  const version = versions.get(name);
  if (version === undefined) throw missingExtension(database, name);
  return version;
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteQualified(schema: string, table: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}

export function quoteLiteral(v: string): string {
  return `'${v.replace(/'/g, "''")}'`;
}

/**
 * Runs fn in one transaction: commit, or rollback and rethrow. Given a pool, a client
 * is checked out for it and released after; given a client, that client is used.
 * `begin` may carry the mode ("begin isolation level repeatable read read only").
 */
export async function withTransaction<T>(
  db: pg.Pool | pg.ClientBase,
  fn: (client: pg.ClientBase) => Promise<T>,
  begin = 'begin',
): Promise<T> {
  const pooled = 'totalCount' in db;
  const client = pooled ? await db.connect() : db;
  try {
    await client.query(begin);
    try {
      const out = await fn(client);
      await client.query('commit');
      return out;
    } catch (err) {
      await client.query('rollback').catch(() => undefined);
      throw err;
    }
  } finally {
    if (pooled) (client as pg.PoolClient).release();
  }
}

/**
 * One session of `pool` for `fn`, given back however fn ends. `reset` runs on it first (the
 * session settings or advisory locks fn leaves behind); a reset that fails does not hide fn's
 * outcome, and the session is then closed rather than pooled. So is a session that failed while
 * checked out (terminated by an abort, say): its error neither reaches the pool nor ends the process.
 */
export async function withClient<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  opts: { reset?: string | pg.QueryConfig } = {},
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken = err;
  };
  client.on('error', onError);
  try {
    return await fn(client);
  } finally {
    if (opts.reset && !broken)
      await client.query(opts.reset).catch((err: Error) => {
        broken = err;
      });
    client.off('error', onError);
    client.release(broken);
  }
}
