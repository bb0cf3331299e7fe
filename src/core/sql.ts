// SQL identifiers and literals: the one validator of names that come from the config
// file or a payload, and the quoting every statement built from them goes through.
import type pg from 'pg';
import { z } from 'zod';

const IDENT = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/;

/** "schema.table" with plain identifiers; anything else (quotes, semicolons) is refused. */
export const qualifiedName = z.string().refine((v) => {
  const parts = v.split('.');
  return parts.length === 2 && parts.every((p) => IDENT.test(p));
}, 'must be schema.table with plain identifiers (letters, digits, _ and $)');

export const columnName = z.string().regex(IDENT, 'must be a plain identifier (letters, digits, _ and $)');

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteQualified(schema: string, table: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}

export function quoteLiteral(v: string): string {
  return `'${v.replace(/'/g, "''")}'`;
}

/** Runs fn in a transaction on a checked-out client: commit, or rollback and rethrow. */
export async function withTransaction<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query('begin');
  try {
    const out = await fn();
    await client.query('commit');
    return out;
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  }
}

/** withTransaction on a client of the pool, released afterwards. */
export async function withPoolTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    return await withTransaction(client, () => fn(client));
  } finally {
    client.release();
  }
}
