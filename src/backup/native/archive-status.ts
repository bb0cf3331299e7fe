// The native engine's archive health: it forces a WAL switch and times the
// segment's arrival in the archive directory (an archive_command that "succeeds"
// without copying is caught here, not by pg_stat_archiver), reads pg_stat_archiver,
// compares the server's current segment with the newest archived one, and checks
// the archive has no gap from the oldest base backup to now.
import fs from 'node:fs/promises';
import { backupDirOf } from '../../core/config.ts';
import { PermanentJobError } from '../../core/errors.ts';
import { readyBacklog } from '../archiver.ts';
import { listBaseBackups, recoveryWindow } from '../catalog.ts';
import type { ArchiveStatus, EngineRun, EngineTarget } from '../engine.ts';
import { refusalLine } from '../manifest-checks.ts';
import { listArchive, newestSegment, parseLsn, parseSize, segmentNumber, waitForArchived } from '../wal.ts';

/**
 * The target's WAL directory, or a refusal naming WAL_ARCHIVE_DIR. A restore writes it
 * into restore_command, so there it must carry no quote or backslash.
 */
export function archiveDirOf(target: EngineTarget, forRestore = false): string {
  const dir = target.walArchiveDir;
  if (!dir) {
    throw new PermanentJobError(
      `WAL_ARCHIVE_DIR: not set for target "${target.name}"${forRestore ? '; a restore reads WAL from it' : ''}`,
      'WAL_ARCHIVE_DIR',
    );
  }
  if (forRestore && /['"\\]/.test(dir)) {
    throw new PermanentJobError(
      `WAL_ARCHIVE_DIR: ${dir} contains a quote or backslash; restore_command cannot carry it safely`,
      'WAL_ARCHIVE_DIR',
    );
  }
  return dir;
}

export async function nativeArchiveStatus(
  run: EngineRun,
  p: { waitSeconds: number; maxLagSegments: number },
): Promise<ArchiveStatus> {
  const archiveDir = archiveDirOf(run.target);
  await fs.access(archiveDir, fs.constants.R_OK).catch((err) => {
    throw new PermanentJobError(
      `WAL_ARCHIVE_DIR: ${archiveDir} cannot be read: ${(err as Error).message}`,
      'WAL_ARCHIVE_DIR',
    );
  });
  const problems: string[] = [];
  const warnings: string[] = [];

  const { rows: settings } = await run.pool.query<{ archive_mode: string; segsize: string }>(
    `select current_setting('archive_mode') as archive_mode, current_setting('wal_segment_size') as segsize`,
  );
  const segmentSize = parseSize(settings[0]!.segsize);
  if (settings[0]!.archive_mode === 'off') problems.push('archive_mode is off: no WAL is archived');

  // A transaction id makes sure there is WAL to switch away from.
  await run.progress(5, 'forcing a WAL switch');
  await run.pool.query('select pg_current_xact_id()');
  const { rows: sw } = await run.pool.query<{ seg: string }>('select pg_walfile_name(pg_switch_wal()) as seg');
  const forced = sw[0]!.seg;
  let archiveSeconds: number | null = null;
  try {
    archiveSeconds = (await waitForArchived(archiveDir, forced, p.waitSeconds * 1000, run.signal)) / 1000;
    await run.log(`segment ${forced} reached the archive in ${archiveSeconds.toFixed(1)} s`);
  } catch {
    await run.log(`segment ${forced} did not reach the archive within ${p.waitSeconds} s`);
  }

  await run.progress(60, 'reading pg_stat_archiver and the archive');
  const { rows: st } = await run.pool.query<{
    archived_count: string;
    last_archived_wal: string | null;
    last_archived_time: Date | null;
    failed_count: string;
    last_failed_wal: string | null;
    last_failed_time: Date | null;
    current_lsn: string;
    current_wal: string;
  }>(`select a.archived_count, a.last_archived_wal, a.last_archived_time,
              a.failed_count, a.last_failed_wal, a.last_failed_time,
               pg_current_wal_lsn()::text as current_lsn, pg_walfile_name(pg_current_wal_lsn()) as current_wal
          from pg_stat_archiver a`);
  const s = st[0]!;
  const pendingReady = await readyBacklog(run.pool);
  const failing = s.last_failed_time && (!s.last_archived_time || s.last_failed_time > s.last_archived_time);
  if (archiveSeconds === null) {
    problems.push(
      failing
        ? `archive_command is failing: segment ${forced} not archived within ${p.waitSeconds} s; ` +
            `pg_stat_archiver: ${s.failed_count} failures, last ${s.last_failed_wal} at ` +
            `${s.last_failed_time!.toISOString()}`
        : s.last_archived_wal && s.last_archived_wal >= forced
          ? `archive_command reports ${s.last_archived_wal} archived but segment ${forced} is not in ` +
            `${archiveDir}: the command succeeds without copying there`
          : `segment ${forced} not archived within ${p.waitSeconds} s (pg_stat_archiver: last archived ` +
            `${s.last_archived_wal ?? 'never'}, ${s.failed_count} failures)`,
    );
  } else if (failing) {
    warnings.push(
      `pg_stat_archiver shows ${s.failed_count} failures, the last (${s.last_failed_wal}) at ` +
        `${s.last_failed_time!.toISOString()}, after the last success`,
    );
  }

  const archive = await listArchive(archiveDir, segmentSize);
  const newest = newestSegment(archive);
  // Everything before the segment being written should be archived.
  const currentSegno = segmentNumber(parseLsn(s.current_lsn), segmentSize);
  const lagSegments = newest ? Math.max(0, Number(currentSegno - 1n - newest.segno)) : null;
  const lagSeconds = lagSegments === 0 ? 0 : newest ? Math.round((Date.now() - newest.mtime.getTime()) / 1000) : null;
  if (lagSegments !== null && lagSegments > p.maxLagSegments)
    problems.push(
      `archive lags ${lagSegments} segments (${lagSeconds} s) behind the server's current WAL ${s.current_wal}`,
    );

  const { bases, refused } = await listBaseBackups(backupDirOf(run.config), run.target.name);
  for (const r of refused) warnings.push(refusalLine(r));
  const window = recoveryWindow(bases, archive);
  if (bases.length === 0)
    warnings.push('no verified base backup: point-in-time recovery is not possible yet (run base-backup)');
  for (const b of window.brokenChains) {
    (b.label === bases.at(0)?.manifest.label ? problems : warnings).push(
      `WAL archive gap: segment ${b.missing} is missing after base backup ${b.label}`,
    );
  }

  return {
    ok: problems.length === 0,
    forcedSegment: forced,
    archiveSeconds,
    lagSegments,
    lagSeconds,
    pendingReady,
    currentWal: s.current_wal,
    newestArchived: newest?.name ?? null,
    archivedSegments: archive.segments.length,
    pgStatArchiver: {
      archivedCount: Number(s.archived_count),
      lastArchivedWal: s.last_archived_wal,
      lastArchivedTime: s.last_archived_time?.toISOString() ?? null,
      failedCount: Number(s.failed_count),
      lastFailedWal: s.last_failed_wal,
      lastFailedTime: s.last_failed_time?.toISOString() ?? null,
    },
    recoveryWindow: window,
    newestBaseBackupAgeSeconds: bases[0]
      ? Math.round((Date.now() - Date.parse(bases[0].manifest.stoppedAt)) / 1000)
      : null,
    warnings,
    problems,
  };
}
