// The partition archives of a target, as restore-partition and the backups listing see
// them: every manifest drop-expired-partitions wrote (locally, and its copy in the
// bucket when one is configured), checked before it is believed. A manifest names its
// parent, the partitions in the file with their rows (and, since restores exist, their
// bounds), the file's size and sha256, and where its verified copy in the bucket is.
// With encryption configured a manifest must carry a MAC that verifies, or it is refused.
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { whyOutside } from '../core/paths.ts';
import { qualifiedName } from '../core/sql.ts';
import { checkObject, parseJson, type Refusal, storedObjectSchema } from './manifest-checks.ts';
import { whyUnauthenticated } from './manifest-mac.ts';
import { readLocal, textOf } from './manifest-read.ts';
import { partitionArchiveName } from './names.ts';
import type { ObjectStore, StoredObject } from './object-store.ts';

export const MANIFEST_SUFFIX = '.manifest.json';

export const partitionArchiveDir = (backupDir: string, target: string) => path.join(backupDir, 'partitions', target);

const archivedPartition = z
  .object({
    partition: qualifiedName,
    rows: z.number().int().nonnegative(),
    /** SQL literals of the key type, as the parent's partition bound said (archives made since restores exist). */
    from: z.string().max(200).optional(),
    to: z.string().max(200).optional(),
  })
  .loose();

const manifestSchema = z
  .object({
    kind: z.literal('pgmaint-partition-archive').optional(),
    version: z.union([z.literal(1), z.literal(2)]).optional(),
    target: z.string().optional(),
    parent: qualifiedName.optional(),
    partitions: z.array(archivedPartition).min(1).optional(),
    partition: qualifiedName.optional(),
    rows: z.number().int().nonnegative().optional(),
    bytes: z.number().int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 in hex'),
    createdAt: z.iso.datetime().optional(),
    object: storedObjectSchema.optional(),
  })
  .loose();

export interface PartitionArchiveManifest {
  parent: string;
  partitions: z.output<typeof archivedPartition>[];
  bytes: number;
  sha256: string;
  createdAt: string | null;
  object?: StoredObject;
}

export interface ListedPartitionArchive {
  /** The archive's file name (<schema>.<parent>-<stamp>.dump.zst). */
  file: string;
  /** The local file, when it is still there. */
  localPath: string | null;
  manifest: PartitionArchiveManifest;
  /** Where it can be read from: local, bucket, or both. */
  location: 'local' | 'bucket' | 'local+bucket';
}

export interface PartitionArchiveListing {
  archives: ListedPartitionArchive[];
  refused: Refusal[];
}

type Checked = { ok: true; value: PartitionArchiveManifest } | { ok: false; reason: string };

function check(text: string, target: string, file: string, store?: ObjectStore): Checked {
  const json = parseJson(text);
  if (!json.ok) return json;
  // With encryption configured, its MAC first: nothing in it is believed before (manifest-mac.ts).
  const unauthenticated = whyUnauthenticated(json.value, store?.keyring);
  if (unauthenticated) return { ok: false, reason: unauthenticated };
  const parsed = manifestSchema.safeParse(json.value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { ok: false, reason: `${issue.path.join('.') || 'manifest'}: ${issue.message}` };
  }
  const m = parsed.data;
  if (m.target !== undefined && m.target !== target) return { ok: false, reason: `target: must be "${target}"` };
  const partitions = m.partitions ?? (m.partition ? [{ partition: m.partition, rows: m.rows ?? 0 }] : undefined);
  if (!partitions) return { ok: false, reason: 'partitions: missing' };
  // The file is named after its parent: a manifest naming another parent describes another file.
  const parent = m.parent ?? file.slice(0, file.lastIndexOf('-'));
  if (!file.startsWith(`${parent}-`)) return { ok: false, reason: `parent: ${parent} is not the parent its name says` };
  if (m.object && store) {
    const why = checkObject(m.object, store, 'partitions', target, file);
    if (why) return { ok: false, reason: why };
  }
  return {
    ok: true,
    value: {
      parent,
      partitions,
      bytes: m.bytes,
      sha256: m.sha256,
      createdAt: m.createdAt ?? null,
      ...(m.object ? { object: m.object as StoredObject } : {}),
    },
  };
}

const exists = (file: string) =>
  fs.stat(file).then(
    () => true,
    () => false,
  );

/** Partition archives of a target, newest first: local manifests, then the bucket's (the local one counts first). */
export async function listPartitionArchives(
  backupDir: string,
  target: string,
  store?: ObjectStore,
): Promise<PartitionArchiveListing> {
  const dir = partitionArchiveDir(backupDir, target);
  const archives: ListedPartitionArchive[] = [];
  const refused: Refusal[] = [];
  const names = await fs.readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  for (const e of names) {
    if (e.startsWith('.') || !e.endsWith(MANIFEST_SUFFIX)) continue;
    const where = path.join(dir, e);
    const file = e.slice(0, -MANIFEST_SUFFIX.length);
    if (!partitionArchiveName.safeParse(file).success) continue;
    const outside = await whyOutside(dir, file);
    if (outside) {
      refused.push({ object: where, reason: outside });
      continue;
    }
    const text = textOf(await readLocal(where), where, refused);
    if (text === undefined) continue;
    const checked = check(text, target, file, store);
    if (!checked.ok) {
      refused.push({ object: where, reason: checked.reason });
      continue;
    }
    const local = path.join(dir, file);
    const here = await exists(local);
    if (!here && !checked.value.object) continue; // neither here nor in the bucket: nothing to restore
    archives.push({
      file,
      localPath: here ? local : null,
      manifest: checked.value,
      location: here ? (checked.value.object ? 'local+bucket' : 'local') : 'bucket',
    });
  }
  if (store) {
    const folder = store.folder('partitions', target);
    for (const key of await store.list(folder)) {
      if (!key.endsWith(MANIFEST_SUFFIX)) continue;
      const file = key.slice(folder.length, -MANIFEST_SUFFIX.length);
      if (!partitionArchiveName.safeParse(file).success) continue;
      if (archives.some((a) => a.file === file)) continue; // the local manifest counts
      const where = store.url(key);
      const text = textOf(await store.getText(key), where, refused);
      if (text === undefined) continue;
      const checked = check(text, target, file, store);
      if (checked.ok && !checked.value.object) {
        refused.push({ object: where, reason: 'object: missing (none in the bucket)' });
        continue;
      }
      if (!checked.ok) {
        refused.push({ object: where, reason: checked.reason });
        continue;
      }
      archives.push({ file, localPath: null, manifest: checked.value, location: 'bucket' });
    }
  }
  archives.sort((a, b) => b.file.slice(b.file.lastIndexOf('-')).localeCompare(a.file.slice(a.file.lastIndexOf('-'))));
  return { archives, refused };
}
