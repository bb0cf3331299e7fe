// The native engine's expiry: backups.base over the base backups in BACKUP_DIR (the
// newest keepLast, the maxAgeDays window and the backup that anchors it, never one a
// running drill holds), and the WAL older than the oldest retained backup's first
// segment. A base backup stops counting before its files go (a rename).
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { backupDirOf } from '../../core/config.ts';
import { fsyncPath, treeSize } from '../../core/files.ts';
import { baseBackupLockKey, type ListedBaseBackup, listBaseBackups, readArchive } from '../catalog.ts';
import type { EngineRun, ExpiryOutcome, ExpiryPlan } from '../engine.ts';
import { HELD_BY_DRILL, planRetention, type RetentionPolicy } from '../retention.ts';
import { parseSegmentName } from '../wal.ts';

export async function planNativeExpiry(
  run: EngineRun,
  o: { policy: RetentionPolicy; now: number; lock: pg.ClientBase },
): Promise<ExpiryPlan> {
  const name = run.target.name;
  const { bases, refused } = await listBaseBackups(backupDirOf(run.config), name);
  const plan = planRetention(bases, (b) => Date.parse(b.manifest.stoppedAt), o.policy, o.now, true);
  // Held on the caller's session until the expiry is applied, so no drill starts on a
  // backup that is being removed.
  const skipped: { label: string; reason: string }[] = [];
  for (const d of plan.filter((d) => !d.keep)) {
    const { rows } = await o.lock.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1)) as ok', [
      baseBackupLockKey(name, d.item.manifest.label),
    ]);
    if (!rows[0]!.ok) {
      d.keep = true;
      d.reason = HELD_BY_DRILL;
      skipped.push({ label: d.item.manifest.label, reason: d.reason });
    }
  }
  const wal = await planWal(
    run.target.walArchiveDir,
    plan.filter((d) => d.keep).map((d) => d.item),
  );
  const decisions = plan.map((d) => ({
    label: d.item.manifest.label,
    sets: [d.item.manifest.label],
    stoppedAt: d.item.manifest.stoppedAt,
    action: d.keep ? ('keep' as const) : ('remove' as const),
    reason: d.reason,
  }));
  return {
    decisions,
    skipped,
    refused,
    walFiles: wal.remove,
    notes: [`WAL: ${wal.note}`],
    view: {
      baseBackups: decisions.map(({ label, stoppedAt, action, reason }) => ({ label, stoppedAt, action, reason })),
      wal: { keepFrom: wal.keepFrom, remove: wal.remove.length, removeBytes: wal.bytes, note: wal.note },
    },
  };
}

export async function applyNativeExpiry(
  run: EngineRun,
  plan: ExpiryPlan,
  { dryRun }: { dryRun: boolean },
): Promise<ExpiryOutcome> {
  if (dryRun) return { bytesFreed: 0, details: { walFiles: plan.walFiles.slice(0, 1000) } };
  const going = new Set(plan.decisions.filter((d) => d.action !== 'keep').map((d) => d.label));
  const { bases } = await listBaseBackups(backupDirOf(run.config), run.target.name);
  let freed = 0;
  for (const b of bases.filter((b) => going.has(b.manifest.label))) freed += await removeBaseBackup(b);
  for (const f of plan.walFiles) {
    const st = await fs.stat(f).catch(() => undefined);
    await fs.rm(f, { force: true });
    freed += st?.size ?? 0;
  }
  return { bytesFreed: freed, details: {} };
}

/** WAL files older than the oldest retained base backup's first segment. */
async function planWal(
  archiveDir: string | undefined,
  retained: ListedBaseBackup[],
): Promise<{ keepFrom: string | null; remove: string[]; bytes: number; note: string }> {
  if (!archiveDir) return { keepFrom: null, remove: [], bytes: 0, note: 'no WAL archive configured for this target' };
  const oldest = retained.at(-1);
  if (!oldest) return { keepFrom: null, remove: [], bytes: 0, note: 'no base backup retained: every WAL file is kept' };
  const m = oldest.manifest;
  const keepFrom = parseSegmentName(m.startWal, m.walSegmentSize)!.segno;
  const archive = await readArchive(archiveDir, m.walSegmentSize);
  const remove: string[] = [];
  let bytes = 0;
  for (const f of archive?.files ?? []) {
    const seg = f.segment && parseSegmentName(f.segment, m.walSegmentSize);
    if (!seg || seg.segno >= keepFrom) continue; // history files and unknown names are never touched
    const full = path.join(archiveDir, f.name);
    remove.push(full);
    bytes += (await fs.stat(full).catch(() => undefined))?.size ?? 0;
  }
  return {
    keepFrom: m.startWal,
    remove,
    bytes,
    note: `keeping WAL from ${m.startWal} (start of base backup ${m.label}); ${remove.length} older files to remove`,
  };
}

async function removeBaseBackup(b: ListedBaseBackup): Promise<number> {
  const size = await treeSize(b.path);
  const doomed = path.join(path.dirname(b.path), `.${path.basename(b.path)}.removing`);
  await fs.rename(b.path, doomed);
  await fsyncPath(path.dirname(b.path));
  await fs.rm(doomed, { recursive: true, force: true });
  return size;
}
