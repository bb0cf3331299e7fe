// The verified archive of the partitions a retention run drops: one pg_dump of the
// detached tables (custom format, uncompressed, so the server's COPY is not joined by
// zlib on the same cores), compressed by zstd on its way to the file. It counts only
// once a full read-back through pg_restore finds each partition's rows, as many as the
// detached table held; then it is published under its final name, uploaded to the
// object store when one is configured, and described by a manifest. Only then may the
// partitions be dropped.
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import { backupDirOf } from '../core/config.ts';
import { fileStamp, publish, sha256File, writeJsonAtomic } from '../core/files.ts';
import { binPath, runPipeline } from '../core/proc.ts';
import { whyOutside } from '../core/paths.ts';
import { quoteQualified } from '../core/sql.ts';
import type { JobContext } from '../runner/job-definition.ts';
import { keyringFor } from './keyring.ts';
import { checkObject, parseJson, storedObjectSchema } from './manifest-checks.ts';
import { sealManifest, whyUnauthenticated } from './manifest-mac.ts';
import { readLocal } from './manifest-read.ts';
import { partitionArchiveName } from './names.ts';
import { objectStoreFor, objectUrl, type StoredObject } from './object-store.ts';

/** One partition's place in an archive file (several partitions may share the file). */
export interface Archive {
  partition: string;
  /** Where the archive is: the local file, or s3://bucket/key once the local copy is removed (keepLocal false). */
  file: string;
  /** Its manifest, a local file that stays (beside where the archive was written). */
  manifest: string;
  rows: number;
  /** The file's size and checksum. */
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

export interface ArchiveManifest {
  sha256: string;
  bytes: number;
  /** Version 2: every partition in the file; version 1 (one partition a file) had `partition` and `rows`. */
  partitions?: { partition: string; rows: number }[];
  partition?: string;
  rows?: number;
  object?: StoredObject;
}

const ARCHIVE_SUFFIX = '.dump.zst';
const MANIFEST_SUFFIX = '.manifest.json';

/** The local file an archive was written as (its manifest's name without the suffix): what the journal records. */
export const writtenFile = (a: Pick<Archive, 'manifest'>) => a.manifest.slice(0, -MANIFEST_SUFFIX.length);

export function splitQualified(partition: string): [string, string] {
  const dot = partition.indexOf('.');
  return [partition.slice(0, dot), partition.slice(dot + 1)];
}

/** The manifests already proven in a run, by archive file: a file several partitions share is read once. */
export type ProvenArchives = Map<string, Promise<ArchiveManifest | undefined>>;

/**
 * An archive an interrupted run finished (journal state archived) still counts if its
 * file (or its copy in the bucket) matches the manifest, and the manifest lists the partition.
 */
export async function reusableArchive(
  ctx: JobContext,
  partition: string,
  entry: ArchivedEntry | undefined,
  proven: ProvenArchives,
): Promise<Archive | undefined> {
  if (entry?.state !== 'archived' || !entry.archiveFile || !entry.archiveSha256) return undefined;
  const file = entry.archiveFile;
  const sha256 = entry.archiveSha256;
  if (!proven.has(file)) proven.set(file, provenManifest(ctx, file, sha256));
  const manifest = await proven.get(file);
  if (!manifest) return undefined;
  const listed = manifest.partitions ?? [{ partition: manifest.partition!, rows: manifest.rows! }];
  const mine = listed.find((x) => x.partition === partition);
  if (!mine) return undefined;
  return {
    partition,
    file: manifest.object && !(await exists(file)) ? objectUrl(manifest.object) : file,
    manifest: `${file}${MANIFEST_SUFFIX}`,
    rows: mine.rows,
    bytes: manifest.bytes,
    sha256,
    ...(manifest.object ? { object: manifest.object } : {}),
  };
}

const exists = (file: string) =>
  fs.stat(file).then(
    () => true,
    () => false,
  );

/**
 * Why the journal's archive file, or its manifest's object, is not where this target's
 * archives lie (a journal row and a manifest are data, not paths to trust), or undefined.
 */
async function untrusted(ctx: JobContext, file: string, manifest?: ArchiveManifest): Promise<string | undefined> {
  const dir = archiveDir(ctx);
  const name = path.basename(file);
  if (!partitionArchiveName.safeParse(name).success || path.resolve(file) !== path.join(path.resolve(dir), name)) {
    return `must be a partition archive in ${dir}`;
  }
  const outside = await whyOutside(dir, name);
  if (outside) return outside;
  if (!manifest?.object) return undefined;
  const object = storedObjectSchema.safeParse(manifest.object);
  if (!object.success) return `object: ${object.error.issues[0]!.message}`;
  const store = objectStoreFor(ctx.config);
  if (!store) return undefined; // nothing is read from a bucket then
  try {
    return checkObject(object.data, store, 'partitions', ctx.target.name, name);
  } finally {
    store.close();
  }
}

async function provenManifest(ctx: JobContext, file: string, sha256: string): Promise<ArchiveManifest | undefined> {
  const refuse = async (why: string) => {
    await ctx.log(`refused archive ${file} (retention journal): ${why}; its partitions are archived again`);
    return undefined;
  };
  const before = await untrusted(ctx, file);
  if (before) return refuse(before);
  try {
    const read = await readArchiveManifest(ctx, `${file}${MANIFEST_SUFFIX}`);
    if (!read) return undefined;
    if (!read.ok) return refuse(`its manifest: ${read.reason}`);
    const manifest = read.value;
    if (manifest.sha256 !== sha256) return undefined;
    const after = await untrusted(ctx, file, manifest);
    if (after) return refuse(`its manifest's ${after}`);
    if (manifest.object) {
      // Its copy in the bucket is what counts: read back and compared, not taken on trust.
      const store = objectStoreFor(ctx.config);
      const stored = await store?.sha256Of(manifest.object.key, ctx.signal).finally(() => store.close());
      if (stored?.sha256 !== manifest.object.sha256) return undefined;
    } else if ((await sha256File(file)) !== sha256) return undefined;
    return manifest;
  } catch {
    return undefined;
  }
}

/**
 * A partition archive's manifest, read from its local file (never through a symlink, at
 * most 1 MiB), or why it is refused: not JSON, or, with encryption configured, a MAC that
 * is missing or does not verify; undefined when there is no such file. Its sha256 and row
 * counts are believed only after this.
 */
export async function readArchiveManifest(
  ctx: Pick<JobContext, 'config'>,
  file: string,
): Promise<{ ok: true; value: ArchiveManifest } | { ok: false; reason: string } | undefined> {
  const read = await readLocal(file);
  if (!read) return undefined;
  if ('refused' in read) return { ok: false, reason: read.refused };
  const json = parseJson(read.text);
  if (!json.ok) return json;
  const unauthenticated = whyUnauthenticated(json.value, keyringFor(ctx.config));
  return unauthenticated ? { ok: false, reason: unauthenticated } : { ok: true, value: json.value as ArchiveManifest };
}

const archiveDir = (ctx: JobContext) => path.join(backupDirOf(ctx.config), 'partitions', ctx.target.name);

/**
 * Removes what killed runs left in `dir` for these names: partial files, and archives
 * that never got their manifest (they never counted). `names` are "schema.table"; a
 * file belongs to one when it starts with it and a dash (names hold no dashes).
 */
async function removeLeftovers(ctx: JobContext, dir: string, names: string[]): Promise<void> {
  const prefixes = names.map((n) => `${n}-`);
  for (const entry of await fs.readdir(dir)) {
    // Compared as text, never as a pattern: names may hold $ and other regex characters.
    if (!prefixes.some((x) => entry.startsWith(x))) continue;
    const orphan =
      entry.endsWith('.partial') ||
      ((entry.endsWith('.dump') || entry.endsWith(ARCHIVE_SUFFIX)) &&
        !(await fs.stat(path.join(dir, `${entry}.manifest.json`)).catch(() => null)));
    if (orphan) {
      await fs.rm(path.join(dir, entry), { force: true });
      await ctx.log(`removed ${entry}, left by an interrupted run`);
    }
  }
}

/** One pg_dump of detached partitions of `parent`, verified before it counts; an Archive for each. */
export async function archivePartitions(
  ctx: JobContext,
  client: pg.ClientBase,
  parent: string,
  partitions: string[],
  bounds?: Map<string, { from: string; to: string }>,
): Promise<Archive[]> {
  const dir = archiveDir(ctx);
  await fs.mkdir(dir, { recursive: true }).catch((err) => {
    throw new PermanentJobError(`BACKUP_DIR: cannot create ${dir}: ${(err as Error).message}`);
  });
  await removeLeftovers(ctx, dir, [parent, ...partitions]);
  // Detached, the tables take no more writes through the parent; these counts are the dump's.
  const rows = new Map<string, number>();
  for (const p of partitions)
    rows.set(
      p,
      Number((await client.query(`select count(*) as n from ${quoteQualified(...splitQualified(p))}`)).rows[0].n),
    );
  const file = path.join(dir, `${parent}-${fileStamp()}${ARCHIVE_SUFFIX}`);
  const tmp = `${file}.partial`;
  // Governed: the children at a lower priority, and the pacer reads at most streamMaxRate.
  const nice = ctx.governor.gentle?.childNice;
  try {
    await runPipeline(
      [
        {
          nice,
          cmd: binPath('pg_dump'),
          args: [
            '--format=custom',
            '--compress=0',
            '--no-password',
            ...partitions.map((p) => `--table=${quoteQualified(...splitQualified(p))}`),
          ],
          libpq: ctx.libpqSettings(),
        },
        { nice, cmd: 'zstd', args: ['-q', '-3', '-o', tmp] },
      ],
      // Paced by the governor: while the run is held no byte is read, and the server's COPY waits.
      { signal: ctx.signal, relay: ctx.governor.pacer(`pg_dump of ${parent}`, { readOnly: true }) },
    );
    const found = await readBack(ctx, tmp);
    for (const p of partitions) {
      const n = found.get(p);
      if (n === undefined) throw new Error(`archive of ${p} has no TABLE DATA entry; not dropped`);
      if (n !== rows.get(p)) throw new Error(`archive of ${p} holds ${n} rows, the table ${rows.get(p)}; not dropped`);
    }
    const bytes = (await fs.stat(tmp)).size;
    const sha256 = await sha256File(tmp, ctx.signal);
    await publish(tmp, file);
    const object = await uploadArchive(ctx, file);
    const listed = partitions.map((p) => ({ partition: p, rows: rows.get(p)! }));
    // The bounds let restore-partition attach a partition again exactly where it was.
    const described = listed.map((x) => ({ ...x, ...bounds?.get(x.partition) }));
    const manifestBody = {
      kind: 'pgmaint-partition-archive',
      version: 2,
      target: ctx.target.name,
      parent,
      format: 'custom',
      compression: 'zstd',
      partitions: described,
      bytes,
      sha256,
      createdAt: new Date().toISOString(),
      jobId: ctx.jobId,
      ...(object ? { object } : {}),
    };
    // Authenticated (with encryption configured) before it is written anywhere: manifest-mac.ts.
    const sealed = sealManifest(manifestBody, keyringFor(ctx.config));
    await writeJsonAtomic(`${file}${MANIFEST_SUFFIX}`, sealed);
    // In the bucket too, beside the object: with keepLocal false it is the only record a lost host leaves.
    if (object) await putManifest(ctx, path.basename(file), sealed);
    const removed = object && !ctx.config.objectStore!.keepLocal;
    if (removed) await fs.rm(file, { force: true });
    const where = removed ? objectUrl(object) : file;
    const manifest = `${file}${MANIFEST_SUFFIX}`;
    return listed.map((x) => ({ ...x, file: where, manifest, bytes, sha256, ...(object ? { object } : {}) }));
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Reads the whole archive back, as a restore would: zstd checks its checksum, pg_restore
 * turns it into a script, and the rows of each TABLE DATA entry's COPY are counted.
 * Returns rows by "schema.table".
 */
async function readBack(ctx: JobContext, file: string): Promise<Map<string, number>> {
  const counter = new CopyRowCounter();
  const nice = ctx.governor.gentle?.childNice;
  await runPipeline(
    [
      { nice, cmd: 'zstd', args: ['-q', '-d', '-c', file] },
      { nice, cmd: binPath('pg_restore'), args: ['--file=-'] },
    ],
    {
      signal: ctx.signal,
      onStdout: (chunk) => counter.push(chunk),
      relay: ctx.governor.pacer(`read-back of ${path.basename(file)}`, { readOnly: true }),
    },
  );
  return counter.rows;
}

/**
 * Counts the rows of each TABLE DATA entry's COPY in a pg_restore script, as it streams.
 * The few lines outside COPY data are read as text; data lines are only counted, by
 * finding their newlines, which costs a tenth of splitting them into strings (a retention
 * run reads millions of them on the cores the database uses).
 */
export class CopyRowCounter {
  /** Rows by "schema.table", set when its COPY's end marker is read. */
  readonly rows = new Map<string, number>();
  /** The TABLE DATA entry whose COPY comes next. */
  private entry: string | undefined;
  /** The entry whose COPY data is being read, and its rows so far. */
  private copying: string | undefined;
  private count = 0;
  /** The bytes of a line not yet ended, from earlier chunks. */
  private pending: Buffer[] = [];

  push(chunk: Buffer): void {
    let from = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, from)) {
      this.line(chunk, from, nl);
      from = nl + 1;
    }
    if (from < chunk.length) this.pending.push(chunk.subarray(from));
  }

  private line(chunk: Buffer, from: number, to: number): void {
    if (this.copying !== undefined && !this.pending.length) {
      // COPY's end marker, a line of its own; a data line never equals it.
      if (to - from === 2 && chunk[from] === 0x5c && chunk[from + 1] === 0x2e) this.endCopy();
      else this.count++;
      return;
    }
    const text = Buffer.concat([...this.pending, chunk.subarray(from, to)]).toString('utf8');
    this.pending = [];
    if (this.copying !== undefined) {
      if (text === '\\.') this.endCopy();
      else this.count++;
    } else if (text.startsWith('-- Data for Name: ')) {
      // "-- Data for Name: <table>; Type: TABLE DATA; Schema: <schema>; Owner: …" (names hold no ";")
      const m = /^-- Data for Name: ([^;]+); Type: TABLE DATA; Schema: ([^;]+);/.exec(text);
      this.entry = m ? `${m[2]}.${m[1]}` : undefined;
    } else if (this.entry && text.startsWith('COPY ') && text.endsWith(' FROM stdin;')) {
      this.copying = this.entry;
      this.count = 0;
      this.entry = undefined;
    }
  }

  private endCopy(): void {
    this.rows.set(this.copying!, this.count);
    this.copying = undefined;
  }
}

async function putManifest(ctx: JobContext, name: string, body: object): Promise<void> {
  const store = objectStoreFor(ctx.config);
  if (!store) return;
  try {
    await store.putJson(store.manifestKey('partitions', ctx.target.name, name), body);
  } finally {
    store.close();
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
      ctx.governor.pacer(`upload of ${path.basename(file)}`, { readOnly: true }),
    );
    await ctx.log(`uploaded ${objectUrl(object)} and read it back (${object.bytes} bytes)`);
    return object;
  } finally {
    store.close();
  }
}
