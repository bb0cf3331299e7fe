// libpq settings for child processes (pg_dump, pg_restore, pg_basebackup, psql) on a
// target, and the password file that carries its password to them.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TargetConfig } from './config.ts';
import { processAlive } from './pid.ts';

/**
 * How a child process connects: PG* variables for its environment, and the password
 * apart. The password never enters an environment (`/proc/<pid>/environ`) or a command
 * line (`ps`): the child reads it from a mode-0600 file of its own (see writePassfile).
 */
export interface LibpqSettings {
  env: Record<string, string>;
  password?: string;
}

export function libpqSettings(target: Pick<TargetConfig, 'url'>, applicationName = 'pgmaint'): LibpqSettings {
  const u = new URL(target.url);
  const env: Record<string, string> = {
    PGHOST: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')) || 'localhost',
    PGPORT: u.port || '5432',
    PGDATABASE: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    PGAPPNAME: applicationName,
  };
  if (u.username) env.PGUSER = decodeURIComponent(u.username);
  // host=/socket/dir and sslmode=… in the query string are honoured like libpq does.
  const host = u.searchParams.get('host');
  if (host) env.PGHOST = host;
  const sslmode = u.searchParams.get('sslmode');
  if (sslmode) env.PGSSLMODE = sslmode;
  return u.password ? { env, password: decodeURIComponent(u.password) } : { env };
}

const PASSFILE_PREFIX = 'pgmaint-passfile-';
let sweptAbandoned = false;

/**
 * Writes `password` to a new mode-0600 file in the temporary directory, for one child
 * process (PGPASSFILE): its one line matches any host, port, database and user, since
 * the child connects only where its PG* variables say. The caller removes it once the
 * child has exited (`remove` never throws). Files left by a process that was killed
 * are removed by the next process that writes one.
 */
export async function writePassfile(
  password: string,
  owner?: { uid?: number; gid?: number },
): Promise<{ path: string; remove: () => Promise<void> }> {
  if (/[\r\n]/.test(password))
    throw new Error('the password holds a line break, which no libpq password file can hold');
  if (!sweptAbandoned) {
    sweptAbandoned = true;
    await removeAbandonedPassfiles();
  }
  const file = path.join(os.tmpdir(), `${PASSFILE_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`);
  // O_EXCL: never through a file or link someone else put there first.
  const fh = await fs.open(file, 'wx', 0o600);
  try {
    await fh.writeFile(`*:*:*:*:${password.replace(/[\\:]/g, (c) => `\\${c}`)}\n`);
    // A child that runs as another OS user must be able to read it, and only that user.
    if (owner?.uid !== undefined && owner.uid !== process.getuid?.()) await fh.chown(owner.uid, owner.gid ?? -1);
  } catch (err) {
    await fh.close();
    await fs.rm(file, { force: true });
    throw err;
  }
  await fh.close();
  return { path: file, remove: () => fs.rm(file, { force: true }).catch(() => undefined) };
}

async function removeAbandonedPassfiles(): Promise<void> {
  const dir = os.tmpdir();
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(PASSFILE_PREFIX)) continue;
    const pid = Number(name.slice(PASSFILE_PREFIX.length).split('-')[0]);
    if (!Number.isInteger(pid) || pid === process.pid || processAlive(pid)) continue;
    await fs.rm(path.join(dir, name), { force: true }).catch(() => undefined);
  }
}
