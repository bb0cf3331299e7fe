// A backup file (a dump or a partition archive) put where a restore can read it, and
// proven first: the local file when it is still there, else its object in the bucket,
// downloaded and decrypted as it streams (the stored bytes checked against the
// manifest's object sha256 on the way). Either way the plain file's sha256 must equal
// the manifest's before a byte of it reaches pg_restore.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { deploymentTag } from '../core/config.ts';
import { PermanentJobError } from '../core/errors.ts';
import { sha256File, sha256Tree } from '../core/files.ts';
import type { JobContext } from '../runner/job-definition.ts';
import { objectStoreFor, objectUrl, type StoredObject } from './object-store.ts';

export interface BackupFile {
  /** What it is called in messages (a dump's file name, an archive's). */
  name: string;
  /** The local file, when it is still there. */
  localPath: string | null;
  object?: StoredObject;
  /** Of the plain file (for a dump directory: of its sorted "sha256  name" lines). */
  sha256: string;
  directory?: boolean;
}

export interface Fetched {
  file: string;
  /** Where it was read from: the local path or the s3:// URL. */
  source: string;
  /** Removes the downloaded copy (nothing for a local file). */
  release(): Promise<void>;
}

/** The file, proven against its manifest; a damaged or unreadable one fails naming it (code DUMP_DAMAGED). */
export async function fetchVerified(ctx: JobContext, b: BackupFile, kind: string): Promise<Fetched> {
  const local = b.localPath && (await fs.stat(b.localPath).catch(() => undefined)) ? b.localPath : null;
  let fetched: Fetched;
  if (local) {
    fetched = { file: local, source: local, release: async () => undefined };
  } else {
    if (!b.object) throw new PermanentJobError(`${kind} ${b.name}: neither the local file nor a bucket copy exists`);
    if (b.directory) throw new PermanentJobError(`${kind} ${b.name}: a directory-format dump has no bucket copy`);
    const store = objectStoreFor(ctx.config);
    if (!store)
      throw new PermanentJobError(
        `${kind} ${b.name} is only in ${objectUrl(b.object)} but objectStore is not configured`,
        'NO_STORE',
      );
    const dir = ctx.config.backups.scratchDir ?? os.tmpdir();
    // Named by deployment and job: a retry of a killed run writes over its own leftover.
    const file = path.join(dir, `.pgmaint-restore-${deploymentTag(ctx.config)}-${ctx.jobId}-${b.name}`);
    const release = () => fs.rm(file, { force: true });
    try {
      await fs.mkdir(dir, { recursive: true });
      await ctx.log(
        `downloading ${objectUrl(b.object)} (${b.object.bytes} bytes)` +
          (b.object.encryption ? ', decrypting as it streams' : ''),
      );
      // Paced by the run's governor (a pass-through for a run that is not governed): held, no byte is read.
      await store.download(b.object, file, ctx.signal, () =>
        ctx.governor.pacer(`download of ${b.name}`, { readOnly: true }),
      );
    } catch (err) {
      await release();
      if (ctx.signal.aborted) throw err;
      throw new PermanentJobError(`${kind} ${b.name}: ${(err as Error).message}`, 'DUMP_DAMAGED', { cause: err });
    } finally {
      store.close();
    }
    fetched = { file, source: objectUrl(b.object), release };
  }
  const actual = b.directory
    ? (await sha256Tree(fetched.file, ctx.signal)).sha256
    : await sha256File(fetched.file, ctx.signal);
  if (actual !== b.sha256) {
    await fetched.release();
    throw new PermanentJobError(
      `${kind} ${b.name} (${fetched.source}) is damaged: sha256 ${actual.slice(0, 16)}… differs from its manifest's ` +
        `${b.sha256.slice(0, 16)}…`,
      'DUMP_DAMAGED',
    );
  }
  await ctx.log(`${kind} ${b.name}: sha256 matches its manifest (${fetched.source})`);
  return fetched;
}
