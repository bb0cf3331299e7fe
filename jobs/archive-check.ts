// archive-check: is WAL archiving healthy, and what recovery window do the base
// backups and the archive give? It forces a WAL switch and times the segment's
// arrival in the archive directory (an archive_command that "succeeds" without
// copying is caught here, not by pg_stat_archiver), reads pg_stat_archiver,
// compares the server's current segment with the newest archived one, and checks
// the archive has no gap from the oldest base backup to now. Any problem fails
// the run, naming it; the figures are in the log and, on success, the result.
import fs from 'node:fs/promises';
import type pg from 'pg';
import { z } from 'zod';
import { refusalLine } from '../src/backup/manifest-checks.ts';
import { listBaseBackups, readBackupCatalog, recoveryWindow } from '../src/backup/catalog.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { backupDirOf } from '../src/core/config.ts';
import { Pgbackrest } from '../src/backup/pgbackrest.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';
import {
  listArchive,
  newestSegment,
  parseLsn,
  parseSegmentName,
  parseSize,
  segmentNumber,
  waitForArchived,
} from '../src/backup/wal.ts';

export const payload = z.object({
  target: targetField,
  /** How long the forced segment may take to reach the archive. */
  waitSeconds: z.number().int().min(1).max(3600).default(60),
  /** Segments waiting to be archived (besides the one being written) before it counts as a problem. */
  maxLagSegments: z.number().int().min(0).default(2),
});

const job = defineJob({
  name: 'archive-check',
  description: 'Forces a WAL switch and times its archiving; pg_stat_archiver, archive lag, gaps, recovery window.',
  payload,
  defaults: { attempts: 1, backoffMs: 10_000, timeoutMs: 15 * 60_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'the recovery window is read from the base backups there' },
    walArchive: { why: 'it waits for the forced segment to reach the archive' },
    pgbackrest: { why: 'pgbackrest check and info, for the pgbackrest engine' },
  },
  deduplicate: true,
  async handler(ctx, p) {
    if (ctx.target.backup.engine === 'pgbackrest') return checkPgbackrest(ctx, p);
    const archiveDir = ctx.target.walArchiveDir;
    if (!archiveDir)
      throw new PermanentJobError(`WAL_ARCHIVE_DIR: not set for target "${p.target}"`, 'WAL_ARCHIVE_DIR');
    await fs.access(archiveDir, fs.constants.R_OK).catch((err) => {
      throw new PermanentJobError(
        `WAL_ARCHIVE_DIR: ${archiveDir} cannot be read: ${(err as Error).message}`,
        'WAL_ARCHIVE_DIR',
      );
    });
    const problems: string[] = [];
    const warnings: string[] = [];

    const { rows: settings } = await ctx.pool.query<{ archive_mode: string; archive_command: string; segsize: string }>(
      `select current_setting('archive_mode') as archive_mode, current_setting('archive_command') as ` +
        `archive_command, current_setting('wal_segment_size') as segsize`,
    );
    const segmentSize = parseSize(settings[0]!.segsize);
    if (settings[0]!.archive_mode === 'off') problems.push('archive_mode is off: no WAL is archived');

    // A transaction id makes sure there is WAL to switch away from.
    await ctx.progress(5, 'forcing a WAL switch');
    await ctx.pool.query('select pg_current_xact_id()');
    const { rows: sw } = await ctx.pool.query<{ seg: string }>('select pg_walfile_name(pg_switch_wal()) as seg');
    const forced = sw[0]!.seg;
    let archiveSeconds: number | null = null;
    try {
      archiveSeconds = (await waitForArchived(archiveDir, forced, p.waitSeconds * 1000, ctx.signal)) / 1000;
      await ctx.log(`segment ${forced} reached the archive in ${archiveSeconds.toFixed(1)} s`);
    } catch {
      await ctx.log(`segment ${forced} did not reach the archive within ${p.waitSeconds} s`);
    }

    await ctx.progress(60, 'reading pg_stat_archiver and the archive');
    const { rows: st } = await ctx.pool.query<{
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
    const pendingReady = await readyBacklog(ctx.pool);
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

    const { bases, refused } = await listBaseBackups(backupDirOf(ctx.config), p.target);
    for (const r of refused) warnings.push(refusalLine(r));
    const window = recoveryWindow(bases, archive);
    if (bases.length === 0)
      warnings.push('no verified base backup: point-in-time recovery is not possible yet (run base-backup)');
    for (const b of window.brokenChains) {
      (b.label === bases.at(0)?.manifest.label ? problems : warnings).push(
        `WAL archive gap: segment ${b.missing} is missing after base backup ${b.label}`,
      );
    }

    const result = {
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
    await ctx.log(`archive check: ${JSON.stringify(result)}`);
    for (const w of warnings) await ctx.log(`warning: ${w}`);
    if (problems.length)
      throw new PermanentJobError(`WAL archive unhealthy: ${problems.join('; ')}`, 'ARCHIVE_UNHEALTHY');
    await ctx.progress(
      100,
      `archive healthy: lag ${lagSegments} segments, window ${window.earliest ?? '—'} … ${window.latest ?? '—'}`,
    );
    return result;
  },
});

/**
 * The pgbackrest engine: `pgbackrest check` (which forces a switch and waits for that
 * segment in the repository), the archive's min/max from `info`, pg_stat_archiver,
 * and the .ready backlog (the asynchronous spool's, when archive-async is on).
 */
async function checkPgbackrest(ctx: JobContext, p: z.output<typeof payload>) {
  const br = new Pgbackrest(ctx.target);
  const problems: string[] = [];
  await ctx.progress(5, `pgbackrest check (stanza ${br.stanza})`);
  const started = Date.now();
  let archiveSeconds: number | null = null;
  try {
    await br.run(['check', `--archive-timeout=${p.waitSeconds}`], { signal: ctx.signal });
    archiveSeconds = (Date.now() - started) / 1000;
  } catch (err) {
    problems.push(`pgbackrest check failed: ${(err as Error).message}`);
  }
  const info = await br.info(ctx.signal);
  const { rows } = await ctx.pool.query<{
    last_archived_wal: string | null;
    last_archived_time: Date | null;
    failed_count: string;
    last_failed_wal: string | null;
    current_wal: string;
    segsize: string;
  }>(`select a.last_archived_wal, a.last_archived_time, a.failed_count, a.last_failed_wal,
            pg_walfile_name(pg_current_wal_lsn()) as current_wal, current_setting('wal_segment_size') as segsize
       from pg_stat_archiver a`);
  const s = rows[0]!;
  const pendingReady = await readyBacklog(ctx.pool);
  const segmentSize = parseSize(s.segsize);
  const segno = (name: string) => parseSegmentName(name, segmentSize)!.segno;
  const max = info.archive?.max;
  // Everything before the segment being written should be in the repository.
  const lagSegments = max ? Math.max(0, Number(segno(s.current_wal) - 1n - segno(max))) : null;
  const lagSeconds =
    lagSegments === 0
      ? 0
      : s.last_archived_time
        ? Math.round((Date.now() - s.last_archived_time.getTime()) / 1000)
        : null;
  if (lagSegments !== null && lagSegments > p.maxLagSegments) {
    problems.push(
      `archive lags ${lagSegments} segments (${lagSeconds} s) behind the server's current WAL ${s.current_wal}`,
    );
  }
  if (!info.archive) problems.push(`stanza ${br.stanza} has no archived WAL`);
  const catalog = await readBackupCatalog(backupDirOf(ctx.config), ctx.target);
  const result = {
    ok: problems.length === 0,
    engine: 'pgbackrest' as const,
    stanza: br.stanza,
    archiveSeconds,
    lagSegments,
    lagSeconds,
    pendingReady,
    currentWal: s.current_wal,
    archive: info.archive,
    pgStatArchiver: {
      lastArchivedWal: s.last_archived_wal,
      lastArchivedTime: s.last_archived_time?.toISOString() ?? null,
      failedCount: Number(s.failed_count),
      lastFailedWal: s.last_failed_wal,
    },
    recoveryWindow: catalog.recoveryWindow,
    problems,
  };
  await ctx.log(`archive check: ${JSON.stringify(result)}`);
  if (problems.length)
    throw new PermanentJobError(`WAL archive unhealthy: ${problems.join('; ')}`, 'ARCHIVE_UNHEALTHY');
  await ctx.progress(100, `archive healthy: lag ${lagSegments} segments, repository ${info.archive?.min} … ${max}`);
  return result;
}

/** WAL segments waiting for archive_command (.ready files); null when the role may not list them
 * (needs pg_monitor or superuser). */
async function readyBacklog(pool: pg.Pool): Promise<number | null> {
  return pool
    .query<{ n: string }>(`select count(*) as n from pg_ls_archive_statusdir() where name like '%.ready'`)
    .then(
      (r) => Number(r.rows[0]!.n),
      () => null,
    );
}

export default job;

/** What a archive-check run returns (its result in the run history and the API). */
export type ArchiveCheckResult = JobResult<typeof job>;
