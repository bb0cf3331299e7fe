// The files of a base backup on disk (`<label>/data/`, as pg_basebackup wrote them):
// unpacking the tar format into a data directory, and pg_verifybackup over the
// result. Used by base-backup (to verify before publishing) and by the PITR drill
// (to restore, verifying again what it restores).
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { PermanentJobError } from '../core/errors.ts';
import type { OsOwner } from '../core/local-postgres.ts';
import { fsyncPath } from '../core/files.ts';
import { binPath, runProcess } from '../core/proc.ts';

const TAR_NAME = /^(base|pg_wal|\d+)\.tar(\.gz|\.lz4|\.zst)?$/;

function decompressFlag(ext: string | undefined): string[] {
  if (ext === '.gz') return ['-z'];
  if (ext === '.lz4') return ['-I', 'lz4'];
  if (ext === '.zst') return ['-I', 'zstd'];
  return [];
}

/**
 * Builds a data directory at `dest` from a backup's `data/` folder: tar format is
 * unpacked (base.tar into dest, pg_wal.tar into dest/pg_wal), plain format copied.
 * Files end up owned by `owner` (the server's OS user) when one is given.
 */
export async function materializeDataDir(
  backupData: string,
  format: 'tar' | 'plain',
  dest: string,
  opts: { signal?: AbortSignal; owner?: OsOwner; durable?: DiskFlush } = {},
): Promise<void> {
  await fs.mkdir(dest, { recursive: true, mode: 0o700 });
  const unpacking = unpack(backupData, format, dest, opts.signal);
  // Flushed while they are written: the disk's time overlaps the unpacking.
  opts.durable?.start(dest, unpacking);
  await unpacking;
  await fs.chmod(dest, 0o700);
  if (opts.owner)
    await runProcess('chown', ['-R', `${opts.owner.uid}:${opts.owner.gid}`, dest], { signal: opts.signal });
}

async function unpack(backupData: string, format: 'tar' | 'plain', dest: string, signal?: AbortSignal) {
  if (format === 'plain') {
    await runProcess('cp', ['-a', `${backupData}/.`, dest], { signal });
  } else {
    const names = await fs.readdir(backupData);
    const tars = names.map((n) => [n, TAR_NAME.exec(n)] as const).filter(([, m]) => m);
    const tablespaces = tars.filter(([, m]) => /^\d+$/.test(m![1]!));
    if (tablespaces.length) {
      throw new PermanentJobError(
        `base backup ${backupData} holds tablespaces (${tablespaces.map(([n]) => n).join(', ')}); restoring extra ` +
          `tablespaces from tar format is not supported — use format "plain"`,
        'UNSUPPORTED',
      );
    }
    const base = tars.find(([, m]) => m![1] === 'base');
    if (!base) throw new Error(`base backup ${backupData} has no base.tar`);
    const wal = tars.find(([, m]) => m![1] === 'pg_wal');
    if (wal) await fs.mkdir(path.join(dest, 'pg_wal'), { recursive: true, mode: 0o700 });
    // The two archives unpack at once: each is one decompressing pipeline (tar and its filter).
    // Both are waited for, so a failure never leaves the other writing into a removed directory.
    const unpacked = await Promise.allSettled([
      runProcess('tar', ['-x', ...decompressFlag(base[1]![2]), '-f', path.join(backupData, base[0]), '-C', dest], {
        signal,
      }),
      wal &&
        runProcess(
          'tar',
          ['-x', ...decompressFlag(wal[1]![2]), '-f', path.join(backupData, wal[0]), '-C', path.join(dest, 'pg_wal')],
          { signal },
        ),
    ]);
    for (const u of unpacked) if (u.status === 'rejected') throw u.reason;
  }
}

/**
 * Writes a directory tree's files to disk (fsync of every file and directory), as a
 * restored server needs before it starts: left in the page cache, its startup would
 * fsync them all itself, after the unpacking, at the disk's pace. Files are flushed
 * while they are still being written, and each again only once it has changed.
 */
export class DiskFlush {
  private readonly synced = new Map<string, string>();
  private passes: Promise<void> = Promise.resolve();

  constructor(private readonly signal?: AbortSignal) {}

  /** Flushes the tree in passes while `writing` runs (until it settles, whichever way). */
  start(dir: string, writing: Promise<unknown>): void {
    let settled = false;
    const done = writing.then(
      () => (settled = true),
      () => (settled = true),
    );
    this.passes = (async () => {
      while (!settled) {
        await this.pass(dir);
        await Promise.race([done, sleep(FLUSH_PASS_MS)]);
      }
    })();
    this.passes.catch(() => undefined); // finish() reports it
  }

  /** Waits for the passes started, then flushes what they left: the tree is durable after it. */
  async finish(dir: string): Promise<void> {
    await this.passes;
    await this.pass(dir);
  }

  /**
   * Flushes what changed since the last pass (returns how many it flushed); after the
   * writer is done, this makes the tree durable.
   */
  async pass(dir: string): Promise<number> {
    const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
    const paths = [dir, ...entries.map((e) => path.join(e.parentPath, e.name))];
    let next = 0;
    let flushed = 0;
    const lane = async () => {
      while (next < paths.length) {
        this.signal?.throwIfAborted();
        const p = paths[next++]!;
        const st = await fs.lstat(p).catch(() => undefined);
        if (!st || !(st.isFile() || st.isDirectory())) continue;
        // A file that grew, or a directory that gained entries, is flushed again.
        const version = `${st.size}:${st.mtimeMs}`;
        if (this.synced.get(p) === version) continue;
        // A file removed since it was listed (the writer's temporary files) needs no flush.
        const gone = await fsyncPath(p).then(
          () => false,
          (err) => {
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
            throw err;
          },
        );
        if (gone) continue;
        this.synced.set(p, version);
        flushed++;
      }
    };
    await Promise.all(Array.from({ length: FLUSH_LANES }, lane));
    return flushed;
  }
}

/** Pause between flush passes over a tree being written. */
const FLUSH_PASS_MS = 100;
/** Files flushed at once (each fsync waits for its own writes). */
const FLUSH_LANES = 4;

/**
 * pg_verifybackup of a data directory against the backup manifest: every file's
 * size and checksum, and (unless `parseWal` is false) the WAL the backup needs parsed
 * with pg_waldump. The files are split by size between VERIFY_LANES processes (each
 * told to leave the others' files alone), as pgBackRest checks with several processes.
 * Throws naming the files that do not match.
 */
export async function verifyDataDir(
  dataDir: string,
  manifestPath: string,
  signal?: AbortSignal,
  { parseWal = true } = {},
): Promise<void> {
  const lanes = await splitManifest(manifestPath, VERIFY_LANES);
  const outcomes = await Promise.allSettled(
    lanes.map((others, i) =>
      runProcess(
        binPath('pg_verifybackup'),
        [
          '--quiet',
          ...(parseWal && i === lanes.length - 1 ? [] : ['--no-parse-wal']),
          ...others.flatMap((file) => ['--ignore', file]),
          '--manifest-path',
          manifestPath,
          dataDir,
        ],
        { signal },
      ),
    ),
  );
  const failures = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason);
  if (!failures.length) return;
  signal?.throwIfAborted();
  const problems = failures
    .flatMap((err) => ((err as { stderr?: string }).stderr ?? (err as Error).message).split('\n'))
    .filter((l) => /error/i.test(l));
  throw new Error(
    `pg_verifybackup: the base backup does not match its manifest: ${
      [...new Set(problems)].slice(0, 5).join(' | ') || (failures[0] as Error).message
    }`,
    { cause: failures[0] },
  );
}

/** pg_verifybackup processes at once, each checking a share of the files. */
const VERIFY_LANES = 2;
/** Above this many bytes of --ignore arguments the files are checked by one process. */
const MAX_IGNORE_ARG_BYTES = 1 << 20;

/**
 * Splits the manifest's files into `lanes` shares of about equal bytes (largest first,
 * each to the lightest share) and returns, for each share, the files of the others:
 * what that lane's process is told to ignore. One lane, ignoring nothing, when the
 * manifest names a file by hex (Encoded-Path) or the lists would be too long.
 */
export async function splitManifest(manifestPath: string, lanes: number): Promise<string[][]> {
  const manifest = JSON.parse(await fs.readFile(manifestPath, 'utf8')) as {
    Files: { Path?: string; 'Encoded-Path'?: string; Size: number }[];
  };
  const files = manifest.Files;
  if (lanes < 2 || files.length < lanes || files.some((f) => f.Path === undefined)) return [[]];
  const shares = Array.from({ length: lanes }, () => ({ bytes: 0, paths: [] as string[] }));
  for (const f of [...files].sort((a, b) => b.Size - a.Size)) {
    const lightest = shares.reduce((a, b) => (b.bytes < a.bytes ? b : a));
    lightest.bytes += f.Size;
    lightest.paths.push(f.Path!);
  }
  const ignored = shares.map((_, i) => shares.flatMap((x, j) => (j === i ? [] : x.paths)));
  const argBytes = Math.max(...ignored.map((xs) => xs.reduce((n, x) => n + x.length + 10, 0)));
  return argBytes > MAX_IGNORE_ARG_BYTES ? [[]] : ignored;
}
