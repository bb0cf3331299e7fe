// The verified archive of a partition that retention drops: pg_dump of the detached
// table, checked (its TABLE DATA entry, its row count, sha256), published under its
// final name, and uploaded to the object store when one is configured. Only then
// may the partition be dropped.
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import { fileStamp, publish, sha256File, writeJsonAtomic } from '../core/files.ts';
import { binPath, runProcess } from '../core/proc.ts';
import { quoteQualified } from '../core/sql.ts';
import type { JobContext } from '../runner/job-definition.ts';
import { objectStoreFor, type StoredObject } from './object-store.ts';

export interface Archive {
  partition: string;
  file: string;
  rows: number;
  bytes: number;
  sha256: string;
  /** The verified copy in the object store, when one is configured. */
  object?: StoredObject;
}

/** What the retention journal says of an archive an earlier run made. */
export interface ArchivedEntry {
  state: string;
  archiveFile: string | null;
  archiveSha256: string | null;
}

export function splitQualified(partition: string): [string, string] {
  const dot = partition.indexOf('.');
  return [partition.slice(0, dot), partition.slice(dot + 1)];
}

/** An archive an interrupted run finished (journal state archived) still counts if its file and manifest agree. */
export async function reusableArchive(ctx: JobContext, entry: ArchivedEntry | undefined): Promise<Archive | undefined> {
  if (entry?.state !== 'archived' || !entry.archiveFile || !entry.archiveSha256) return undefined;
  try {
    const manifest = JSON.parse(await fs.readFile(`${entry.archiveFile}.manifest.json`, 'utf8'));
    if (manifest.sha256 !== entry.archiveSha256) return undefined;
    if (manifest.object) {
      // Its copy in the bucket is what counts: read back and compared, not taken on trust.
      const store = objectStoreFor(ctx.config);
      const stored = await store?.sha256Of(manifest.object.key, ctx.signal).finally(() => store.close());
      if (stored?.sha256 !== manifest.object.sha256) return undefined;
    } else if ((await sha256File(entry.archiveFile)) !== entry.archiveSha256) return undefined;
    const sha256 = entry.archiveSha256;
    return {
      partition: manifest.partition,
      file: entry.archiveFile,
      rows: manifest.rows,
      bytes: manifest.bytes,
      sha256,
      ...(manifest.object ? { object: manifest.object } : {}),
    };
  } catch {
    return undefined;
  }
}

/** pg_dump of one detached partition, verified before it counts. */
export async function archivePartition(ctx: JobContext, client: pg.ClientBase, partition: string): Promise<Archive> {
  const [schema, name] = splitQualified(partition);
  const dir = path.join(ctx.config.backupDir, 'partitions', ctx.target.name);
  await fs.mkdir(dir, { recursive: true }).catch((err) => {
    throw new PermanentJobError(`BACKUP_DIR: cannot create ${dir}: ${(err as Error).message}`);
  });
  // A killed run's leftovers of this partition: partial dumps, and dumps that never got
  // their manifest (they never counted). Names are compared as text, not as patterns.
  for (const entry of await fs.readdir(dir)) {
    if (!entry.startsWith(`${schema}.${name}-`)) continue;
    const orphan =
      entry.endsWith('.partial') ||
      (entry.endsWith('.dump') && !(await fs.stat(path.join(dir, `${entry}.manifest.json`)).catch(() => null)));
    if (orphan) {
      await fs.rm(path.join(dir, entry), { force: true });
      await ctx.log(`removed ${entry}, left by an interrupted run`);
    }
  }
  // Detached, the table takes no more writes through the parent; this count is the dump's.
  const rows = Number((await client.query(`select count(*) as n from ${quoteQualified(schema, name)}`)).rows[0].n);
  const file = path.join(dir, `${schema}.${name}-${fileStamp()}.dump`);
  const tmp = `${file}.partial`;
  try {
    await runProcess(
      binPath('pg_dump'),
      ['--format=custom', '--no-password', `--table=${quoteQualified(schema, name)}`, `--file=${tmp}`],
      { env: ctx.libpqEnv(), signal: ctx.signal },
    );
    const list = await runProcess(binPath('pg_restore'), ['--list', tmp], { signal: ctx.signal });
    // Compared as text, never as a pattern: names may hold $ and other regex characters.
    const entry = ` TABLE DATA ${schema} ${name} `;
    if (!list.stdout.split('\n').some((line) => line.includes(entry)))
      throw new Error(`archive of ${partition} has no TABLE DATA entry; not dropped`);
    const bytes = (await fs.stat(tmp)).size;
    const sha256 = await sha256File(tmp, ctx.signal);
    await publish(tmp, file);
    const object = await uploadArchive(ctx, file);
    await writeJsonAtomic(`${file}.manifest.json`, {
      kind: 'pgmaint-partition-archive',
      version: 1,
      target: ctx.target.name,
      partition,
      rows,
      bytes,
      sha256,
      createdAt: new Date().toISOString(),
      jobId: ctx.jobId,
      ...(object ? { object } : {}),
    });
    if (object && !ctx.config.objectStore!.keepLocal) await fs.rm(file, { force: true });
    return { partition, file, rows, bytes, sha256, ...(object ? { object } : {}) };
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

/** Uploads a published archive to the object store, when one is configured, and proves the copy. */
async function uploadArchive(ctx: JobContext, file: string): Promise<StoredObject | undefined> {
  const store = objectStoreFor(ctx.config);
  if (!store) return undefined;
  try {
    const object = await store.upload(
      file,
      store.keyFor('partitions', ctx.target.name, path.basename(file)),
      ctx.signal,
    );
    await ctx.log(`uploaded s3://${object.bucket}/${object.key} and read it back (${object.bytes} bytes)`);
    return object;
  } finally {
    store.close();
  }
}
