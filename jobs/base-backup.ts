// base-backup: a physical base backup of a target's cluster by its backup engine
// (src/backup/engines/): native pg_basebackup into BACKUP_DIR/base/<target>/, verified
// with pg_verifybackup and published with pgmaint.json (LSNs, times, bytes, MB/s); or
// `pgbackrest backup` then `pgbackrest verify`. With the WAL archive it is what
// point-in-time recovery starts from; a backup that was not verified never counts.
import { z } from 'zod';
import { engineFor } from '../src/backup/engines/index.ts';
import { runAlone } from '../src/backup/run-guard.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z
  .object({
    target: targetField,
    /** The load governor's keys for this run (docs/governor.md); its baseBackupMaxRate is the default maxRate. */
    governor: governorField,
    /** tar: one archive per tablespace plus pg_wal.tar, compressible; plain: a data directory. */
    format: z.enum(['tar', 'plain']).default('tar'),
    /** Client-side compression of the tar format (default lz4; plain format: none). */
    compression: z.enum(['none', 'gzip', 'lz4', 'zstd']).optional(),
    compressionLevel: z.number().int().min(1).max(22).optional(),
    /** fast: an immediate checkpoint; spread: the server's paced one (gentler, slower to start). */
    checkpoint: z.enum(['fast', 'spread']).default('fast'),
    /** Transfer rate limit, e.g. "50M" or "800k" (pg_basebackup --max-rate). */
    maxRate: z
      .string()
      .regex(/^\d+[kM]?$/, 'must look like "800k" or "50M"')
      .optional(),
    /** pgBackRest engine only: full, diff or incr (default incr, which pgBackRest makes full when none exists). */
    type: z.enum(['full', 'diff', 'incr']).optional(),
  })
  .superRefine((p, ctx) => {
    if (p.format === 'plain' && p.compression !== undefined && p.compression !== 'none') {
      ctx.addIssue({
        code: 'custom',
        path: ['compression'],
        message: 'plain format cannot be compressed; use format "tar" or compression "none"',
      });
    }
    if (p.compressionLevel !== undefined && (p.compression ?? (p.format === 'tar' ? 'lz4' : 'none')) === 'none') {
      ctx.addIssue({ code: 'custom', path: ['compressionLevel'], message: 'needs a compression method' });
    }
  });

const LOCK = 'pgmaint:base-backup';

const job = defineJob({
  name: 'base-backup',
  description:
    'pg_basebackup (WAL included, manifest), verified with pg_verifybackup, then published with LSNs and times.',
  payload,
  defaults: { attempts: 2, backoffMs: 60_000, timeoutMs: 12 * 3_600_000, concurrency: 1, heavy: true },
  needs: {
    backupDir: { why: 'base backups are written there' },
    pgBinaries: {
      tools: ['pg_basebackup', 'pg_verifybackup'],
      why: 'pg_basebackup takes it; pg_verifybackup checks it',
    },
    engineTools: { why: 'its backup engine takes it (pgbackrest backup and verify)' },
  },
  deduplicate: true,
  checkConfig: (p, config) => {
    const target = config.targets.get(p.target);
    return target ? engineFor(target).checkBaseBackup(p) : [];
  },
  async handler(ctx, raw) {
    // The unit: the whole backup; pg_basebackup is paced by its own --max-rate, which a stall
    // would not be (its server ends a replication connection silent past wal_sender_timeout).
    await ctx.governor.gate(`base backup of ${raw.target}`, { readOnly: true });
    const maxRate = raw.maxRate ?? ctx.governor.baseBackupMaxRate ?? undefined;
    const p = ctx.target.backup.engine === 'native' && maxRate ? { ...raw, maxRate } : raw;
    const engine = engineFor(ctx.target);
    return runAlone(ctx, LOCK, 'base backup', () => engine.baseBackup(ctx, p));
  },
});

export default job;

/** What a base-backup run returns (its result in the run history and the API). */
export type BaseBackupResult = JobResult<typeof job>;
