// Paths built from names that were read, not written, by this process (a manifest, a
// bucket's key, a journal row): each is proven to stay inside its root before anything
// reads, writes or removes it. Lexically first ("../", and "/backups-evil" is not inside
// "/backups"), then through the symlinks of whatever part of it exists.
import fs from 'node:fs/promises';
import path from 'node:path';
import { PermanentJobError } from './errors.ts';

/** `p` lies strictly below `root` (both absolute and normalized). */
export function isStrictlyInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

async function realpathOrMissing(p: string): Promise<string | undefined> {
  return fs.realpath(p).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
    throw err;
  });
}

/**
 * Why `candidate` (absolute, or relative to `root`) is not a path below `root`, also after
 * resolving symlinks of whatever part of it exists; undefined when it is.
 */
export async function whyOutside(root: string, candidate: string): Promise<string | undefined> {
  const absRoot = path.resolve(root);
  const abs = path.resolve(absRoot, candidate);
  const shown = `path ${JSON.stringify(candidate)}`;
  if (!isStrictlyInside(absRoot, abs)) return `${shown} is not inside ${absRoot}`;
  const realRoot = await realpathOrMissing(absRoot);
  if (realRoot === undefined) return undefined; // nothing exists there yet, so no link can lead out
  // The deepest part of the path that exists: the file itself, or its nearest parent.
  for (let probe = abs; ; probe = path.dirname(probe)) {
    const real = await realpathOrMissing(probe);
    if (real === undefined) continue;
    const ok = probe === abs ? isStrictlyInside(realRoot, real) : real === realRoot || isStrictlyInside(realRoot, real);
    return ok ? undefined : `${shown} leads through a symlink to ${real}, not inside ${absRoot}`;
  }
}

/**
 * `candidate` as an absolute path once whyOutside finds nothing wrong with it; otherwise a
 * PermanentJobError (code PATH_OUTSIDE_ROOT) that names `what`, the object the path came from.
 */
export async function pathInside(root: string, candidate: string, what: string): Promise<string> {
  const why = await whyOutside(root, candidate);
  if (why) throw new PermanentJobError(`${what}: ${why}; refused`, 'PATH_OUTSIDE_ROOT');
  return path.resolve(root, candidate);
}
