// What every engine's restore does before it writes a byte: the directory it
// restores into must be new or empty, and never the live cluster's data directory
// (nor inside it, nor around it). Also the small things every restore shares.
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import type { OsOwner } from '../core/local-postgres.ts';
import type { RestoreTarget } from './engine.ts';

/** The live cluster's data directory, when the target answers and the role may read it. */
export async function liveDataDirectory(pool: pg.Pool): Promise<string | undefined> {
  return pool.query<{ dir: string }>(`select current_setting('data_directory') as dir`).then(
    (r) => r.rows[0]?.dir,
    () => undefined,
  );
}

/** The path with symbolic links resolved as far as it exists (the rest appended). */
export async function resolvedPath(p: string): Promise<string> {
  const rest: string[] = [];
  let head = path.resolve(p);
  for (;;) {
    const real = await fs.realpath(head).catch(() => undefined);
    if (real) return path.join(real, ...rest.reverse());
    const parent = path.dirname(head);
    if (parent === head) return path.resolve(p);
    rest.push(path.basename(head));
    head = parent;
  }
}

export const within = (outer: string, inner: string) => inner === outer || inner.startsWith(`${outer}${path.sep}`);

/**
 * Refuses `into` when it is relative, not a directory, not empty, or the live data directory (or inside it,
 * or holding it); otherwise creates it (mode 0700, owned by `owner`). Each refusal names the directory.
 */
export async function prepareRestoreDir(into: string, live: string | undefined, owner?: OsOwner): Promise<void> {
  const refuse = (why: string) => {
    throw new PermanentJobError(`restore directory ${into}: ${why}`, 'RESTORE_DIR');
  };
  if (!path.isAbsolute(into)) refuse('must be an absolute path');
  if (live) {
    const [dir, liveDir] = await Promise.all([resolvedPath(into), resolvedPath(live)]);
    if (within(liveDir, dir) || within(dir, liveDir)) {
      refuse(`is the live data directory of the target (${live}) or overlaps it; restore into a new directory`);
    }
  }
  const st = await fs.stat(into).catch(() => undefined);
  if (st && !st.isDirectory()) refuse('exists and is not a directory');
  if (st) {
    const entries = await fs.readdir(into);
    if (entries.length) refuse(`is not empty (${entries.length} entries, e.g. ${entries.slice(0, 3).join(', ')})`);
  }
  await fs.mkdir(into, { recursive: true, mode: 0o700 });
  await fs.chmod(into, 0o700);
  if (owner) await fs.chown(into, owner.uid, owner.gid);
}

/** An ISO instant as PostgreSQL reads it ("2026-11-26 17:02:39.123456+00"). */
export const pgTime = (iso: string) => iso.replace('T', ' ').replace('Z', '+00');

/** The restore target in words, for logs and refusals. */
export function describeTarget(target: RestoreTarget): string {
  if (target === 'latest') return 'the end of the archive';
  return 'time' in target ? `T (${target.time})` : `restore point "${target.restorePoint}"`;
}

/** The log line every restore writes once it has chosen its set. */
export function restoringLine(set: { label: string; stoppedAt: string }, target: RestoreTarget): string {
  const before =
    typeof target === 'object' && 'time' in target
      ? `, ${Math.round((Date.parse(target.time) - Date.parse(set.stoppedAt)) / 1000)} s before T`
      : '';
  return `restoring base backup ${set.label} (stopped ${set.stoppedAt}${before}) to ${describeTarget(target)}`;
}

/** A value as postgresql.conf quotes it. */
export const confString = (s: string) => `'${s.replace(/'/g, "''")}'`;

/**
 * Appends recovery settings to postgresql.auto.conf (later lines win) and puts recovery.signal in place
 * (standby.signal removed): a server started on the directory runs archive recovery to the target.
 */
export async function writeRecoverySettings(
  dataDir: string,
  settings: Record<string, string>,
  why: string,
  owner?: OsOwner,
): Promise<void> {
  const auto = path.join(dataDir, 'postgresql.auto.conf');
  const signal = path.join(dataDir, 'recovery.signal');
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confString(v)}`);
  await fs.appendFile(auto, `\n# pgmaint: ${why.replace(/[\r\n]/g, ' ')}\n${lines.join('\n')}\n`);
  await fs.rm(path.join(dataDir, 'standby.signal'), { force: true });
  await fs.writeFile(signal, '');
  if (owner) for (const f of [auto, signal]) await fs.chown(f, owner.uid, owner.gid);
}
