// Where a PITR drill's backup and WAL come from: the native engine's BACKUP_DIR and
// WAL directory, or a pgBackRest repository. Each source picks the backup to restore,
// locks it against prune-backups, and puts a proven data directory in place.
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import { backupDirOf } from '../core/config.ts';
import type { JobContext } from '../runner/job-definition.ts';
import { DiskFlush, materializeDataDir, verifyDataDir } from './base-backup-files.ts';
import { baseBackupLockKey, type ListedBaseBackup, listBaseBackups } from './catalog.ts';
import { refusalLine } from './manifest-checks.ts';
import { Pgbackrest } from './pgbackrest.ts';
import type { ScratchInstance } from './scratch-instance.ts';
import { waitForArchived } from './wal.ts';

/** What the drill asked for, as far as the source cares. */
export interface DrillRequest {
  target: string;
  baseBackup?: string;
  archiveWaitSeconds: number;
}

export interface TargetPoint {
  drillId: string;
  targetTime: string;
  rowCounts: Record<string, number>;
  rpoSeconds: number | null;
  systemIdentifier: string;
  database: string;
  user: string;
}

/** Where a drill's backup and WAL come from: BACKUP_DIR and the WAL directory, or pgBackRest. */
export interface RestoreSource {
  /** Waits until the WAL segment written after T is archived. */
  waitForArchived(segment: string): Promise<void>;
  /** Picks the backup to restore (stopped before T) and locks it against prune-backups. */
  choose(point: TargetPoint, lock: pg.PoolClient): Promise<{ label: string; stoppedAt: string }>;
  /** Puts the data directory in place and proves its files; returns the seconds spent proving. */
  restore(scratch: ScratchInstance, label: string, point: TargetPoint): Promise<number>;
  /** restore_command for the scratch instance; undefined when the restore wrote it. */
  restoreCommand: string | undefined;
  /** The restore_command runs pgBackRest: the scratch server is started with our PGBACKREST_* options. */
  restoreCommandRunsPgbackrest: boolean;
}

export function nativeSource(ctx: JobContext, p: DrillRequest, archiveDir: string): RestoreSource {
  let chosen: ListedBaseBackup | undefined;
  return {
    waitForArchived: (segment) =>
      waitForArchived(archiveDir, segment, p.archiveWaitSeconds * 1000, ctx.signal).then(() => undefined),
    async choose(point, lock) {
      chosen = await chooseBaseBackup(ctx, p, point.targetTime, point.systemIdentifier, lock);
      return chosen.manifest;
    },
    async restore(scratch) {
      const data = path.join(chosen!.path, 'data');
      // On disk before the server starts, as a real restore must be (see DiskFlush).
      const flush = new DiskFlush(ctx.signal);
      await materializeDataDir(data, chosen!.manifest.format, scratch.dataDir, {
        signal: ctx.signal,
        owner: scratch.owner,
        durable: flush,
      });
      const started = Date.now();
      // The files only: the WAL was parsed when the backup was verified, and the replay that
      // follows reads every record of it again (a damaged record fails the drill there). The
      // last of the flushing goes on meanwhile.
      await Promise.all([
        verifyDataDir(scratch.dataDir, path.join(data, 'backup_manifest'), ctx.signal, { parseWal: false }),
        flush.finish(scratch.dataDir),
      ]);
      const seconds = (Date.now() - started) / 1000;
      await ctx.log(
        `restored files match the backup manifest (pg_verifybackup) and are on disk, ${seconds.toFixed(1)} s`,
      );
      return seconds;
    },
    restoreCommand: `cp "${archiveDir}/%f" "%p"`,
    restoreCommandRunsPgbackrest: false,
  };
}

/** pgBackRest restores (checking every file's checksum as it goes) into the scratch directory only. */
export function pgbackrestSource(ctx: JobContext, p: DrillRequest): RestoreSource {
  const br = new Pgbackrest(ctx.target);
  return {
    waitForArchived: (segment) => br.waitForArchived(segment, p.archiveWaitSeconds * 1000, ctx.signal),
    async choose(point, lock) {
      const info = await br.info(ctx.signal);
      for (const r of info.refused) await ctx.log(refusalLine(r));
      const sets = info.sets.filter((s) => !s.error && Date.parse(s.stoppedAt) < Date.parse(point.targetTime));
      const set = p.baseBackup ? sets.find((s) => s.label === p.baseBackup) : sets[0];
      if (!set) {
        throw new PermanentJobError(
          p.baseBackup
            ? `baseBackup: ${p.baseBackup} is not a backup set of stanza ${br.stanza} that stopped before T ` +
                `(${point.targetTime})`
            : `no backup set of stanza ${br.stanza} stopped before T (${point.targetTime}); run base-backup first`,
          'NO_BASE_BACKUP',
        );
      }
      await lock.query('select pg_advisory_lock_shared(hashtext($1))', [baseBackupLockKey(p.target, set.label)]);
      return set;
    },
    async restore(scratch, label, point) {
      await fs.mkdir(scratch.dataDir, { mode: 0o700 });
      if (scratch.owner) await fs.chown(scratch.dataDir, scratch.owner.uid, scratch.owner.gid);
      await br.restore({
        set: label,
        targetTime: pgTime(point.targetTime),
        pgPath: scratch.dataDir,
        signal: ctx.signal,
      });
      return 0;
    },
    // pgbackrest restore wrote its own restore_command (archive-get, with this --pg1-path).
    restoreCommand: undefined,
    restoreCommandRunsPgbackrest: true,
  };
}

/** An ISO instant as PostgreSQL reads it ("2026-11-26 17:02:39.123456+00"). */
export const pgTime = (iso: string) => iso.replace('T', ' ').replace('Z', '+00');

async function chooseBaseBackup(
  ctx: JobContext,
  p: DrillRequest,
  targetTime: string,
  sysid: string,
  lock: pg.PoolClient,
): Promise<ListedBaseBackup> {
  const { bases: all, refused } = await listBaseBackups(backupDirOf(ctx.config), p.target);
  for (const r of refused) await ctx.log(refusalLine(r));
  const usable = all.filter(
    (b) => b.manifest.systemIdentifier === sysid && Date.parse(b.manifest.stoppedAt) < Date.parse(targetTime),
  );
  let chosen: ListedBaseBackup | undefined;
  if (p.baseBackup) {
    chosen = usable.find((b) => b.manifest.label === p.baseBackup);
    if (!chosen)
      throw new PermanentJobError(
        `baseBackup: ${p.baseBackup} is not a verified base backup of this cluster that stopped before T ` +
          `(${targetTime})`,
        'NO_BASE_BACKUP',
      );
  } else {
    chosen = usable[0];
    if (!chosen)
      throw new PermanentJobError(
        `no verified base backup of target "${p.target}" stopped before T (${targetTime}); run base-backup first ` +
          `(${all.length} base backups found)`,
        'NO_BASE_BACKUP',
      );
  }
  await lock.query('select pg_advisory_lock_shared(hashtext($1))', [
    baseBackupLockKey(p.target, chosen.manifest.label),
  ]);
  // prune-backups may have removed it between the listing and the lock.
  const still = (await listBaseBackups(backupDirOf(ctx.config), p.target)).bases.find(
    (b) => b.manifest.label === chosen.manifest.label,
  );
  if (!still) throw new Error(`base backup ${chosen.manifest.label} was removed before the drill could lock it`);
  return still;
}
