// What counts as a backup, read from BACKUP_DIR: a dump counts when its manifest
// sits beside it; a base backup (native engine) counts when its directory carries
// pgmaint.json (written after pg_verifybackup passed, then published by rename).
// Temporary names start with a dot and are never listed. Also: the recovery window
// that the base backups and the WAL archive give together. What a target's backups
// are as a whole, with its engine's sets, is target-catalog.ts.
import fs from 'node:fs/promises';
import path from 'node:path';
import { whyOutside } from '../core/paths.ts';
import {
  checkBaseManifest,
  checkDumpManifest,
  checkRestoreCheck,
  disagreement,
  parseJson,
  type Refusal,
} from './manifest-checks.ts';
import { readLocal, textOf } from './manifest-read.ts';
import { type ObjectStore, objectUrl, type StoredObject } from './object-store.ts';
import { type ArchiveListing, firstGap, listArchive, newestSegment, parseSegmentName, segmentName } from './wal.ts';

export interface DumpManifest {
  kind: 'pgmaint-dump';
  version: 1;
  /** File (custom format) or directory (directory format) name in the dump directory. */
  file: string;
  format: 'custom' | 'directory';
  /** The verified copy in the object store, when one is configured. */
  object?: StoredObject;
  /** pg_dump processes that wrote it (older manifests call it jobs). */
  parallel?: number;
  jobs?: number;
  target: string;
  database: string;
  serverVersion: string;
  pgDumpVersion: string;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  bytes: number;
  /** Of the file; for a directory, of the sorted "sha256  name" lines of its files. */
  sha256: string;
  tables: number;
  /** Rows per table (schema.table), counted in the snapshot the dump was taken from. */
  rowCounts?: Record<string, number>;
  snapshot?: string;
  verified: { method: 'pg_restore --list'; tocEntries: number };
  jobId: string;
}

export interface RestoreCheckRecord {
  checkedAt: string;
  ok: boolean;
  tablesCompared: number;
  mismatches: { table: string; dumped: number; restored: number }[];
  restoreSeconds: number;
  jobId: string;
}

export interface BaseBackupManifest {
  kind: 'pgmaint-base-backup';
  version: 1;
  label: string;
  target: string;
  format: 'tar' | 'plain';
  compression: 'none' | 'gzip' | 'lz4' | 'zstd';
  systemIdentifier: string;
  serverVersion: string;
  timeline: number;
  walSegmentSize: number;
  startLsn: string;
  stopLsn: string;
  /** First and last WAL segment the backup needs to become consistent. */
  startWal: string;
  stopWal: string;
  startedAt: string;
  /** When pg_basebackup reported the end point: the backup is consistent from here. */
  stoppedAt: string;
  finishedAt: string;
  durationMs: number;
  /** Bytes on disk (compressed) and of the cluster files it holds. */
  bytes: number;
  sourceBytes: number;
  mbPerSecond: number;
  verified: { method: 'pg_verifybackup'; seconds: number };
  jobId: string;
}

export const dumpDir = (backupDir: string, target: string) => path.join(backupDir, 'dumps', target);
export const baseDir = (backupDir: string, target: string) => path.join(backupDir, 'base', target);

export interface ListedDump {
  path: string;
  manifest: DumpManifest;
  restoreCheck?: RestoreCheckRecord;
}

export interface ListedBaseBackup {
  path: string;
  manifest: BaseBackupManifest;
}

/** What a listing counts, and what it read but refused to trust (each named, with why). */
export interface DumpListing {
  dumps: ListedDump[];
  refused: Refusal[];
}

export interface BaseBackupListing {
  bases: ListedBaseBackup[];
  refused: Refusal[];
}

async function entries(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
}

/** A restore-check verdict as read (local file or bucket object), checked; a bad one is refused, not shown. */
function restoreCheckOf(text: string | undefined, object: string, refused: Refusal[]): RestoreCheckRecord | undefined {
  if (text === undefined) return undefined;
  const json = parseJson(text);
  const checked = json.ok ? checkRestoreCheck<RestoreCheckRecord>(json.value) : json;
  if (checked.ok) return checked.value;
  refused.push({ object, reason: checked.reason });
  return undefined;
}

/** Why a dump whose only copy is in a bucket does not count where no objectStore is configured. */
const unavailableReason = (o: StoredObject) =>
  `unavailable: the dump is only in ${objectUrl(o)} (no local file) and no objectStore is configured to ` +
  'read it back; not counted as a backup';

/**
 * Verified dumps of a target, newest first. Nothing a manifest says is taken as a path
 * until it passes manifest-checks.ts and pathInside; what does not is refused, by name.
 */
export async function listDumps(backupDir: string, target: string, store?: ObjectStore): Promise<DumpListing> {
  const dir = dumpDir(backupDir, target);
  const dumps: ListedDump[] = [];
  const refused: Refusal[] = [];
  for (const e of await entries(dir)) {
    if (e.startsWith('.') || !e.endsWith('.manifest.json')) continue;
    const where = path.join(dir, e);
    const text = textOf(await readLocal(where), where, refused);
    if (text === undefined) continue; // refused, or removed meanwhile (prune)
    const json = parseJson(text);
    const checked = json.ok ? checkDumpManifest<DumpManifest>(json.value, target, e, store) : json;
    if (!checked.ok) {
      refused.push({ object: where, reason: checked.reason });
      continue;
    }
    const manifest = checked.value;
    const outside = await whyOutside(dir, manifest.file);
    if (outside) {
      refused.push({ object: where, reason: outside });
      continue;
    }
    const file = path.join(dir, manifest.file);
    // A dump counts with its local file, or with its verified copy in the configured bucket: one whose
    // copy is only in a bucket this process has no objectStore for (a plain demo after an --offsite one)
    // cannot be read back, so it is listed as unavailable, never as a backup.
    if (!(await fs.stat(file).catch(() => undefined))) {
      if (!manifest.object) continue;
      if (!store) {
        refused.push({ object: where, reason: unavailableReason(manifest.object) });
        continue;
      }
    }
    const verdict = `${file}.restore-check.json`;
    const verdictText = textOf(await readLocal(verdict), verdict, refused);
    dumps.push({ path: file, manifest, restoreCheck: restoreCheckOf(verdictText, verdict, refused) });
  }
  // With a bucket, its manifests are the catalog every worker shares; local ones add to it.
  if (store) {
    const folder = store.folder('dumps', target);
    for (const key of await store.list(folder)) {
      if (!key.endsWith('.manifest.json')) continue;
      const where = store.url(key);
      const text = textOf(await store.getText(key), where, refused);
      if (text === undefined) continue; // refused, or removed meanwhile (prune)
      const json = parseJson(text);
      const name = key.slice(folder.length);
      let checked = json.ok ? checkDumpManifest<DumpManifest>(json.value, target, name, store) : json;
      if (checked.ok && !checked.value.object) checked = { ok: false, reason: 'object: missing (none in the bucket)' };
      if (!checked.ok) {
        refused.push({ object: where, reason: checked.reason });
        continue;
      }
      const manifest = checked.value;
      const outside = await whyOutside(dir, manifest.file);
      if (outside) {
        refused.push({ object: where, reason: outside });
        continue;
      }
      const file = path.join(dir, manifest.file);
      const local = dumps.findIndex((d) => d.manifest.file === manifest.file);
      // The bucket's word never decides the fate of a local dump it does not describe.
      const differ = local >= 0 ? disagreement(dumps[local]!.manifest, manifest) : [];
      if (differ.length) {
        const reason = `disagrees with the local manifest ${file}.manifest.json (${differ.join(', ')})`;
        refused.push({ object: where, reason: `${reason}; the local one counts` });
        continue;
      }
      const verdictKey = key.replace(/\.manifest\.json$/, '.restore-check.json');
      const verdictText = textOf(await store.getText(verdictKey), store.url(verdictKey), refused);
      const restoreCheck = restoreCheckOf(verdictText, store.url(verdictKey), refused);
      const listed = { path: file, manifest, restoreCheck: restoreCheck ?? dumps[local]?.restoreCheck };
      if (local >= 0) dumps[local] = listed;
      else dumps.push(listed);
    }
  }
  dumps.sort((a, b) => b.manifest.finishedAt.localeCompare(a.manifest.finishedAt));
  return { dumps, refused };
}

/** Verified base backups of a target, newest first; a pgmaint.json that fails its checks is refused. */
export async function listBaseBackups(backupDir: string, target: string): Promise<BaseBackupListing> {
  const dir = baseDir(backupDir, target);
  const bases: ListedBaseBackup[] = [];
  const refused: Refusal[] = [];
  for (const e of await entries(dir)) {
    if (e.startsWith('.')) continue;
    const where = path.join(dir, e, 'pgmaint.json');
    // A directory that leads out is refused before anything in it is read.
    const outside = await whyOutside(dir, e);
    const read = outside ? { refused: outside } : await readLocal(where).catch(() => undefined);
    const text = textOf(read, where, refused); // not a directory, or unreadable: never counted
    if (text === undefined) continue;
    const json = parseJson(text);
    const checked = json.ok ? checkBaseManifest<BaseBackupManifest>(json.value, target, e) : json;
    if (!checked.ok) {
      refused.push({ object: where, reason: checked.reason });
      continue;
    }
    bases.push({ path: path.join(dir, e), manifest: checked.value });
  }
  bases.sort((a, b) => b.manifest.stoppedAt.localeCompare(a.manifest.stoppedAt));
  return { bases, refused };
}

/** Session advisory lock key shared by the drill (shared) and prune (exclusive). */
export const baseBackupLockKey = (target: string, label: string) => `pgmaint:base-backup:${target}:${label}`;

export interface RecoveryWindow {
  /** Earliest point in time that can be restored (the consistent point of the oldest usable base backup). */
  earliest: string | null;
  /** Latest: when the newest archived segment arrived. */
  latest: string | null;
  seconds: number;
  /** The base backup that gives `earliest`. */
  fromBaseBackup: string | null;
  /** Base backups whose WAL chain to the newest archived segment is broken, with the first missing segment. */
  brokenChains: { label: string; missing: string }[];
}

export function recoveryWindow(bases: ListedBaseBackup[], archive: ArchiveListing | undefined): RecoveryWindow {
  const brokenChains: RecoveryWindow['brokenChains'] = [];
  const newest = archive && newestSegment(archive);
  let usable: ListedBaseBackup | undefined;
  // Oldest first: the first with a contiguous chain gives the earliest point.
  for (const b of [...bases].reverse()) {
    if (!archive) break;
    const m = b.manifest;
    const start = parseSegmentName(m.startWal, m.walSegmentSize)!;
    const gap = firstGap(archive, start.segno, m.timeline);
    if (gap === undefined) {
      usable ??= b;
    } else {
      brokenChains.push({ label: m.label, missing: segmentName(m.timeline, gap, m.walSegmentSize) });
    }
  }
  if (!usable || !newest) return { earliest: null, latest: null, seconds: 0, fromBaseBackup: null, brokenChains };
  const earliest = usable.manifest.stoppedAt;
  const latest = newest.mtime.toISOString();
  return {
    earliest,
    latest,
    seconds: Math.max(0, Math.round((newest.mtime.getTime() - Date.parse(earliest)) / 1000)),
    fromBaseBackup: usable.manifest.label,
    brokenChains,
  };
}

/** The archive of a target, or undefined when none is configured or it cannot be read. */
export async function readArchive(dir: string | undefined, segmentSize: number): Promise<ArchiveListing | undefined> {
  if (!dir) return undefined;
  return listArchive(dir, segmentSize).catch(() => undefined);
}
