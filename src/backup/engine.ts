// The seam between pgmaint's backup jobs and the tool that takes physical backups.
// Each engine implements BackupEngine in engines/<name>.ts and is listed in
// engines/index.ts: native (pg_basebackup into BACKUP_DIR and a WAL directory) and
// pgbackrest (a pgBackRest stanza). The jobs (base-backup, archive-check, pitr-drill,
// prune-backups), the catalog the API and the monitor read, and restores go through
// it; none of them asks which engine a target has. test/integration/backup-engine-contract.test.ts
// runs the same cases against every engine (docs/architecture.md, "Backup engines").
import type pg from 'pg';
import type { TargetConfig } from '../core/config.ts';
import type { FieldIssue } from '../core/errors.ts';
import type { OsOwner } from '../core/local-postgres.ts';
import type { JobContext } from '../runner/job-definition.ts';
import type { RecoveryWindow } from './catalog.ts';
import type { Refusal } from './manifest-checks.ts';
import type { RetentionPolicy } from './retention.ts';

export type EngineName = TargetConfig['backup']['engine'];

/** What an engine is built for: a target's name, its WAL directory and its backup settings. */
export type EngineTarget = Pick<TargetConfig, 'name' | 'walArchiveDir' | 'backup'>;

/** What an engine's work sees of a run: a job's context, or a test's. */
export type EngineRun = Pick<
  JobContext,
  'jobId' | 'config' | 'target' | 'pool' | 'signal' | 'libpqSettings' | 'progress' | 'log'
>;

/** base-backup's payload, as the engines read it (each refuses what it has no use for: checkBaseBackup). */
export interface BaseBackupOptions {
  format: 'tar' | 'plain';
  compression?: 'none' | 'gzip' | 'lz4' | 'zstd';
  compressionLevel?: number;
  checkpoint: 'fast' | 'spread';
  maxRate?: string;
  type?: 'full' | 'diff' | 'incr';
}

/** One base backup (native) or backup set (pgBackRest), as every engine lists it. */
export interface BackupSet {
  label: string;
  /** full, or diff/incr on top of `prior`. */
  type: 'full' | 'diff' | 'incr';
  prior: string | null;
  startLsn: string;
  stopLsn: string;
  /** First and last WAL segment the set needs to become consistent. */
  startWal: string;
  stopWal: string;
  startedAt: string;
  /** The set is consistent from here: the earliest time it restores to. */
  stoppedAt: string;
  /** Bytes of the cluster it holds, and what it takes where it is kept (compressed; pgBackRest: its changes). */
  bytes: number;
  storedBytes: number;
  /** Verified, and no error flagged while it was taken: it may be restored. */
  usable: boolean;
}

/** A base backup taken and verified: the set, how it was verified, and what the engine adds (paths, rates). */
export type BaseBackupOutcome = Pick<
  BackupSet,
  'label' | 'startLsn' | 'stopLsn' | 'startWal' | 'stopWal' | 'startedAt' | 'stoppedAt'
> & { verified: { method: string; seconds: number }; [detail: string]: unknown };

export interface EngineCatalog {
  /** Newest first. */
  sets: BackupSet[];
  recoveryWindow: RecoveryWindow;
  /** False when the engine could not measure the window (its archive is unreadable): unknown, not empty. */
  windowMeasured: boolean;
  /** When the newest usable set stopped. */
  newestBaseBackupAt: string | undefined;
  /** Manifests or sets that were read but refused: not listed, each named with why. */
  refused: Refusal[];
  /** The engine's own part of GET /api/backups (native: baseBackups, archive; pgbackrest: pgbackrest). */
  api: Record<string, unknown>;
}

/** Archiving health. A problem is listed (the job fails on it), never thrown. */
export interface ArchiveStatus {
  ok: boolean;
  /** Seconds a forced WAL switch took to reach the archive; null when it did not. */
  archiveSeconds: number | null;
  lagSegments: number | null;
  lagSeconds: number | null;
  /** Segments waiting for archive_command (.ready files); null when the role may not list them. */
  pendingReady: number | null;
  currentWal: string;
  recoveryWindow: RecoveryWindow;
  warnings: string[];
  problems: string[];
  [detail: string]: unknown;
}

/** Where recovery stops: at a time (ISO), at the end of the archive, or at a named restore point. */
export type RestoreTarget = { time: string } | 'latest' | { restorePoint: string };

export interface RestoreOptions {
  /** The set to restore. Default: the newest that stopped before the time; for latest and a restore point,
   * the newest (name the set when the point is older than it). */
  set?: string;
  /** What the server does at the target: promote (default), pause or shutdown. */
  targetAction?: 'promote' | 'pause' | 'shutdown';
  /** The OS user that runs the restored server: the files become its. */
  owner?: OsOwner;
  /** A session on the target on which the chosen set is held against expiry (a shared advisory lock, the
   * drill's) until the caller ends it. */
  lock?: pg.ClientBase;
  /** Only sets of this cluster (its system identifier). */
  systemIdentifier?: string;
}

export interface RestoreOutcome {
  dataDir: string;
  set: { label: string; stoppedAt: string };
  /** Seconds spent putting the files in place (proving them included). */
  seconds: number;
  /** Seconds spent proving the restored files against the set (0: the engine checks them as it copies). */
  verifySeconds: number;
  /** The recovery settings written (restore_command, recovery_target_*); recovery.signal is in place. */
  recovery: Record<string, string>;
  /** How the restored server must be started for its restore_command to work. */
  startOptions: { pgbackrestOptions: boolean };
}

export interface ExpiryDecision {
  label: string;
  /** The sets that go or stay with it (pgBackRest: a full set and the diff/incr sets on it). */
  sets: string[];
  stoppedAt: string;
  /** keep, or what the engine does to it: remove (native) or expire (pgBackRest). */
  action: 'keep' | 'remove' | 'expire';
  reason: string;
}

export interface ExpiryPlan {
  /** Newest first. */
  decisions: ExpiryDecision[];
  /** Kept only because a running drill or restore holds them. */
  skipped: { label: string; reason: string }[];
  refused: Refusal[];
  /** WAL files the engine removes itself (native: those before the oldest kept backup). */
  walFiles: string[];
  /** Lines that explain the plan beyond the decisions (what WAL goes). */
  notes: string[];
  /** The plan as prune-backups' result shows it (native: baseBackups, wal; pgbackrest: backupSets). */
  view: Record<string, unknown>;
}

export interface ExpiryOutcome {
  /** Bytes the engine removed itself (pgBackRest's own removals are not measured). */
  bytesFreed: number;
  /** What the result shows beside the plan (native dry run: walFiles; pgbackrest: its expire lines). */
  details: Record<string, unknown>;
}

export interface BackupEngine {
  readonly name: EngineName;
  /** base-backup payload fields this engine refuses, each named with why (checked when the job is asked for). */
  checkBaseBackup(options: Partial<BaseBackupOptions>): FieldIssue[];
  /** Takes a base backup and verifies it; it counts only once verified. The caller runs it alone per target. */
  baseBackup(run: EngineRun, options: BaseBackupOptions): Promise<BaseBackupOutcome>;
  /** The sets and the recovery window they give with the archive. */
  catalog(backupDir: string, now?: number): Promise<EngineCatalog>;
  /** A forced WAL switch timed into the archive, the lag, gaps, the recovery window. */
  archiveStatus(run: EngineRun, options: { waitSeconds: number; maxLagSegments: number }): Promise<ArchiveStatus>;
  /** Waits until `segment` (or a later one) is in the archive; throws after timeoutMs. */
  waitForArchived(run: Pick<EngineRun, 'signal'>, segment: string, timeoutMs: number): Promise<void>;
  /** Throws, naming the setting, when this target cannot be restored at all. */
  checkRestorable(): void;
  /**
   * Restores a set into `into` (absent or empty; never the live data directory) and writes the recovery
   * settings, so that a server started there replays the archive to `target`. The repository, the archive
   * and the live cluster are only read.
   */
  restore(run: EngineRun, into: string, target: RestoreTarget, options?: RestoreOptions): Promise<RestoreOutcome>;
  /** Which sets go under `policy`; a set held on another session (a drill's) stays. Takes exclusive locks on
   * `lock` for what goes: the caller keeps that session until applyExpiry is done. */
  planExpiry(
    run: EngineRun,
    options: { policy: RetentionPolicy; now: number; lock: pg.ClientBase },
  ): Promise<ExpiryPlan>;
  /** Removes what the plan says goes (dryRun: only says what it would). */
  applyExpiry(run: EngineRun, plan: ExpiryPlan, options: { dryRun: boolean }): Promise<ExpiryOutcome>;
}
