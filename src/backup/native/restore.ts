// The native engine's restore: the chosen base backup (tar unpacked, plain copied)
// into a new directory, proven against its backup manifest with pg_verifybackup and
// flushed to disk, then the recovery settings: restore_command copying from the WAL
// directory, the recovery target, recovery.signal. BACKUP_DIR and the archive are
// only read.
import path from 'node:path';
import { backupDirOf } from '../../core/config.ts';
import { PermanentJobError } from '../../core/errors.ts';
import { DiskFlush, materializeDataDir, verifyDataDir } from '../base-backup-files.ts';
import { baseBackupLockKey, type ListedBaseBackup, listBaseBackups } from '../catalog.ts';
import type { EngineRun, RestoreOptions, RestoreOutcome, RestoreTarget } from '../engine.ts';
import { refusalLine } from '../manifest-checks.ts';
import {
  describeTarget,
  liveDataDirectory,
  pgTime,
  prepareRestoreDir,
  restoringLine,
  writeRecoverySettings,
} from '../restore-dir.ts';
import { archiveDirOf } from './archive-status.ts';

export async function nativeRestore(
  run: EngineRun,
  into: string,
  target: RestoreTarget,
  o: RestoreOptions,
): Promise<RestoreOutcome> {
  const archiveDir = archiveDirOf(run.target, true);
  await prepareRestoreDir(into, await liveDataDirectory(run.pool), o.owner);
  const chosen = await chooseBaseBackup(run, target, o);
  const set = { label: chosen.manifest.label, stoppedAt: chosen.manifest.stoppedAt };
  await run.log(restoringLine(set, target));
  await run.progress(12, `restoring ${set.label} into ${into}`);
  const started = Date.now();
  const data = path.join(chosen.path, 'data');
  // On disk before the server starts, as a real restore must be (see DiskFlush).
  const flush = new DiskFlush(run.signal);
  await materializeDataDir(data, chosen.manifest.format, into, { signal: run.signal, owner: o.owner, durable: flush });
  const verifyStarted = Date.now();
  // The files only: the WAL was parsed when the backup was verified, and the replay that
  // follows reads every record of it again (a damaged record fails recovery there). The
  // last of the flushing goes on meanwhile.
  await Promise.all([
    verifyDataDir(into, path.join(data, 'backup_manifest'), run.signal, { parseWal: false }),
    flush.finish(into),
  ]);
  const verifySeconds = (Date.now() - verifyStarted) / 1000;
  await run.log(
    `restored files match the backup manifest (pg_verifybackup) and are on disk, ${verifySeconds.toFixed(1)} s`,
  );
  const recovery: Record<string, string> = {
    restore_command: `cp "${archiveDir}/%f" "%p"`,
    ...recoveryTarget(target),
    ...(target === 'latest' ? {} : { recovery_target_action: o.targetAction ?? 'promote' }),
    recovery_target_timeline: 'latest',
  };
  await writeRecoverySettings(into, recovery, `restore of ${set.label} to ${describeTarget(target)}`, o.owner);
  return {
    dataDir: into,
    set,
    seconds: (Date.now() - started) / 1000,
    verifySeconds,
    recovery,
    startOptions: { pgbackrestOptions: false },
  };
}

function recoveryTarget(target: RestoreTarget): Record<string, string> {
  if (target === 'latest') return {};
  if ('time' in target) return { recovery_target_time: pgTime(target.time) };
  return { recovery_target_name: target.restorePoint };
}

/**
 * The base backup to restore: the one named, or the newest of this cluster that fits the target
 * (for a time, one that stopped before it). Held (shared) on `o.lock` against prune-backups,
 * then listed again: prune may have removed it between the listing and the lock.
 */
async function chooseBaseBackup(run: EngineRun, target: RestoreTarget, o: RestoreOptions): Promise<ListedBaseBackup> {
  const name = run.target.name;
  const { bases: all, refused } = await listBaseBackups(backupDirOf(run.config), name);
  for (const r of refused) await run.log(refusalLine(r));
  const before = typeof target === 'object' && 'time' in target ? Date.parse(target.time) : Infinity;
  const usable = all.filter(
    (b) =>
      (!o.systemIdentifier || b.manifest.systemIdentifier === o.systemIdentifier) &&
      Date.parse(b.manifest.stoppedAt) < before,
  );
  const fits = before === Infinity ? '' : ` that stopped before ${describeTarget(target)}`;
  let chosen: ListedBaseBackup | undefined;
  if (o.set) {
    chosen = usable.find((b) => b.manifest.label === o.set);
    if (!chosen)
      throw new PermanentJobError(
        `base backup ${o.set}: not a verified base backup of this cluster${fits}`,
        'NO_BASE_BACKUP',
      );
  } else {
    chosen = usable[0];
    if (!chosen)
      throw new PermanentJobError(
        `no verified base backup of target "${name}"${fits}; run base-backup first (${all.length} base backups ` +
          `found)`,
        'NO_BASE_BACKUP',
      );
  }
  if (!o.lock) return chosen;
  await o.lock.query('select pg_advisory_lock_shared(hashtext($1))', [baseBackupLockKey(name, chosen.manifest.label)]);
  const still = (await listBaseBackups(backupDirOf(run.config), name)).bases.find(
    (b) => b.manifest.label === chosen.manifest.label,
  );
  if (!still) throw new Error(`base backup ${chosen.manifest.label} was removed before the restore could lock it`);
  return still;
}
