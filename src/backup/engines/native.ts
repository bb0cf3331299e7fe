// The native engine: pg_basebackup into BACKUP_DIR/base/<target>/, verified with
// pg_verifybackup, and the WAL directory walArchiveDir that archive_command fills.
// pgmaint keeps the catalog (pgmaint.json beside each backup), the retention and the
// restores itself; the phases live in src/backup/native/.
import { DEFAULT_WAL_SEGMENT_BYTES } from '../../core/constants.ts';
import type { FieldIssue } from '../../core/errors.ts';
import { type ListedBaseBackup, listBaseBackups, readArchive, recoveryWindow } from '../catalog.ts';
import type {
  ArchiveStatus,
  BackupEngine,
  BackupSet,
  BaseBackupOptions,
  EngineCatalog,
  EngineRun,
  EngineTarget,
  ExpiryOutcome,
  ExpiryPlan,
  RestoreOptions,
  RestoreOutcome,
  RestoreTarget,
} from '../engine.ts';
import { archiveDirOf, nativeArchiveStatus } from '../native/archive-status.ts';
import { takeNativeBaseBackup } from '../native/base-backup.ts';
import { applyNativeExpiry, planNativeExpiry } from '../native/expiry.ts';
import { nativeRestore } from '../native/restore.ts';
import type { RetentionPolicy } from '../retention.ts';
import { newestSegment, waitForArchived } from '../wal.ts';
import type pg from 'pg';

export class NativeEngine implements BackupEngine {
  readonly name = 'native' as const;

  constructor(private readonly target: EngineTarget) {}

  checkBaseBackup(o: Partial<BaseBackupOptions>): FieldIssue[] {
    return o.type ? [{ path: 'type', message: 'needs the pgbackrest engine (native backups are always full)' }] : [];
  }

  baseBackup(run: EngineRun, options: BaseBackupOptions) {
    return takeNativeBaseBackup(run, options);
  }

  async catalog(backupDir: string): Promise<EngineCatalog> {
    const { bases, refused } = await listBaseBackups(backupDir, this.target.name);
    const archive = await readArchive(
      this.target.walArchiveDir,
      bases[0]?.manifest.walSegmentSize ?? DEFAULT_WAL_SEGMENT_BYTES,
    );
    const newest = archive && newestSegment(archive);
    return {
      sets: bases.map(toSet),
      recoveryWindow: recoveryWindow(bases, archive),
      windowMeasured: Boolean(archive),
      newestBaseBackupAt: bases[0]?.manifest.stoppedAt,
      refused,
      api: {
        baseBackups: bases.map(({ path: where, manifest: m }) => ({
          label: m.label,
          format: m.format,
          compression: m.compression,
          startLsn: m.startLsn,
          stopLsn: m.stopLsn,
          startWal: m.startWal,
          stoppedAt: m.stoppedAt,
          bytes: m.bytes,
          mbPerSecond: m.mbPerSecond,
          verified: m.verified,
          location: 'local' as const,
          where: [where],
        })),
        archive: this.target.walArchiveDir
          ? {
              dir: this.target.walArchiveDir,
              segments: archive?.segments.length ?? null,
              newest: newest?.name ?? null,
              newestAt: newest?.mtime ?? null,
              readable: Boolean(archive),
            }
          : null,
      },
    };
  }

  archiveStatus(run: EngineRun, options: { waitSeconds: number; maxLagSegments: number }): Promise<ArchiveStatus> {
    return nativeArchiveStatus(run, options);
  }

  async waitForArchived(run: Pick<EngineRun, 'signal'>, segment: string, timeoutMs: number): Promise<void> {
    await waitForArchived(archiveDirOf(this.target), segment, timeoutMs, run.signal);
  }

  checkRestorable(): void {
    archiveDirOf(this.target, true);
  }

  restore(run: EngineRun, into: string, target: RestoreTarget, options: RestoreOptions = {}): Promise<RestoreOutcome> {
    return nativeRestore(run, into, target, options);
  }

  planExpiry(run: EngineRun, options: { policy: RetentionPolicy; now: number; lock: pg.ClientBase }) {
    return planNativeExpiry(run, options);
  }

  applyExpiry(run: EngineRun, plan: ExpiryPlan, options: { dryRun: boolean }): Promise<ExpiryOutcome> {
    return applyNativeExpiry(run, plan, options);
  }
}

function toSet({ manifest: m }: ListedBaseBackup): BackupSet {
  return {
    label: m.label,
    type: 'full',
    prior: null,
    startLsn: m.startLsn,
    stopLsn: m.stopLsn,
    startWal: m.startWal,
    stopWal: m.stopWal,
    startedAt: m.startedAt,
    stoppedAt: m.stoppedAt,
    bytes: m.sourceBytes,
    storedBytes: m.bytes,
    usable: true,
  };
}
