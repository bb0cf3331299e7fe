// archive-check: is WAL archiving healthy, and what recovery window do the base
// backups and the archive give? The target's backup engine forces a WAL switch and
// times the segment's arrival in the archive (native: the WAL directory, where an
// archive_command that "succeeds" without copying is caught; pgbackrest: `pgbackrest
// check`), reads pg_stat_archiver, measures the lag behind the server's current
// segment, and looks for gaps after the base backups. Any problem fails the run,
// naming it; the figures are in the log and, on success, the result.
import { z } from 'zod';
import { engineFor } from '../src/backup/engines/index.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

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
    engineTools: { why: 'its backup engine checks the archive (pgbackrest check and info)' },
  },
  deduplicate: true,
  async handler(ctx, p) {
    const result = await engineFor(ctx.target).archiveStatus(ctx, p);
    await ctx.log(`archive check: ${JSON.stringify(result)}`);
    for (const w of result.warnings) await ctx.log(`warning: ${w}`);
    if (result.problems.length)
      throw new PermanentJobError(`WAL archive unhealthy: ${result.problems.join('; ')}`, 'ARCHIVE_UNHEALTHY');
    const w = result.recoveryWindow;
    await ctx.progress(
      100,
      `archive healthy: lag ${result.lagSegments} segments, window ${w.earliest ?? '—'} … ${w.latest ?? '—'}`,
    );
    return result;
  },
});

export default job;

/** What a archive-check run returns (its result in the run history and the API). */
export type ArchiveCheckResult = JobResult<typeof job>;
