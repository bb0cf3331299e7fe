// base-backup: a physical base backup (pg_basebackup, WAL streamed in, backup
// manifest on) of a target's cluster into BACKUP_DIR/base/<target>/<label>/. It is
// written under a dot-name, verified with pg_verifybackup (tar format unpacked into
// a scratch directory first), and only then published by rename with pgmaint.json
// (LSNs, times, bytes, MB/s). With the WAL archive it is what point-in-time
// recovery starts from; a backup without pgmaint.json never counts.
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { baseDir, type BaseBackupManifest } from '../src/backup/catalog.ts';
import { materializeDataDir, verifyDataDir } from '../src/backup/base-backup-files.ts';
import { ensureWritableDir, runAlone } from '../src/backup/run-guard.ts';
import { fileStamp, fsyncPath, treeSize, writeJsonAtomic } from '../src/core/files.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { Pgbackrest } from '../src/backup/pgbackrest.ts';
import { parseLsn, parseSize, segmentName, segmentNumber } from '../src/backup/wal.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { backupDirOf } from '../src/core/config.ts';

export const payload = z
  .object({
    target: targetField,
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

type Compression = BaseBackupManifest['compression'];

const job = defineJob({
  name: 'base-backup',
  description:
    'pg_basebackup (WAL included, manifest), verified with pg_verifybackup, then published with LSNs and times.',
  payload,
  defaults: { attempts: 2, backoffMs: 60_000, timeoutMs: 12 * 3_600_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'base backups are written there' },
    pgBinaries: {
      tools: ['pg_basebackup', 'pg_verifybackup'],
      why: 'pg_basebackup takes it; pg_verifybackup checks it',
    },
    pgbackrest: { why: 'pgbackrest backup and verify, for the pgbackrest engine' },
  },
  deduplicate: true,
  checkConfig: (p, config) => {
    const engine = config.targets.get(p.target)?.backup.engine ?? 'native';
    if (engine === 'native' && p.type)
      return [{ path: 'type', message: 'needs the pgbackrest engine (native backups are always full)' }];
    if (engine !== 'pgbackrest') return [];
    return (['compression', 'compressionLevel', 'maxRate'] as const)
      .filter((k) => p[k] !== undefined)
      .map((k) => ({ path: k, message: `is set in pgbackrest.conf for the pgbackrest engine (target ${p.target})` }));
  },
  async handler(ctx, raw) {
    if (ctx.target.backup.engine === 'pgbackrest') {
      return runAlone(ctx, LOCK, 'base backup', () => pgbackrestBackup(ctx, raw.type ?? 'incr'));
    }
    const p = { ...raw, compression: raw.compression ?? (raw.format === 'tar' ? 'lz4' : 'none') } as const;
    const dir = baseDir(backupDirOf(ctx.config), p.target);
    await ensureWritableDir(dir);
    return runAlone(ctx, LOCK, 'base backup', async () => {
      // Under the lock no other run writes here: every dot-name is an interrupted run's.
      for (const e of await fs.readdir(dir)) {
        if (!e.startsWith('.')) continue;
        await fs.rm(path.join(dir, e), { recursive: true, force: true });
        await ctx.log(`removed leftover ${e} from an interrupted run`);
      }
      return takeBaseBackup(ctx, p, dir);
    });
  },
});

async function takeBaseBackup(
  ctx: JobContext,
  p: z.output<typeof payload> & { compression: Compression },
  dir: string,
) {
  const started = new Date();
  const label = `${p.target}-${fileStamp(started)}`;
  const tmp = path.join(dir, `.${label}.partial`);
  const data = path.join(tmp, 'data');
  const verifyDir = path.join(dir, `.${label}.verify`);
  const { rows } = await ctx.pool.query<{ version: string; sysid: string; segsize: string; tli: number }>(
    `select current_setting('server_version') as version,
            (select system_identifier::text from pg_control_system()) as sysid,
            current_setting('wal_segment_size') as segsize, (select timeline_id from pg_control_checkpoint()) as tli`,
  );
  const info = rows[0]!;
  const segmentSize = parseSize(info.segsize);

  try {
    await fs.mkdir(tmp, { recursive: true });
    const args = [
      '-D',
      data,
      `--format=${p.format}`,
      '--wal-method=stream',
      `--checkpoint=${p.checkpoint}`,
      `--label=pgmaint ${label}`,
      '--manifest-checksums=CRC32C',
      '--progress',
      '--verbose',
      '--no-password',
    ];
    if (p.format === 'tar') args.push(`--compress=${compressSpec(p.compression, p.compressionLevel)}`);
    if (p.maxRate) args.push(`--max-rate=${p.maxRate}`);
    await ctx.log(
      `pg_basebackup of PostgreSQL ${info.version} (system ${info.sysid}), ${p.format} format, ${p.compression} ` +
        `compression, into ${tmp}`,
    );
    let startLsn: string | undefined;
    let stopLsn: string | undefined;
    let timeline = info.tli;
    let stoppedAt: Date | undefined;
    let lastReport = 0;
    await runProcess(binPath('pg_basebackup'), args, {
      libpq: ctx.libpqSettings(),
      signal: ctx.signal,
      onStderrLine: (line) => {
        const start = /write-ahead log start point: ([0-9A-F]+\/[0-9A-F]+) on timeline (\d+)/.exec(line);
        if (start) {
          startLsn = start[1];
          timeline = Number(start[2]);
          void ctx.log(`checkpoint done; WAL start point ${startLsn} on timeline ${timeline}`).catch(() => undefined);
        }
        const end = /write-ahead log end point: ([0-9A-F]+\/[0-9A-F]+)/.exec(line);
        if (end) {
          stopLsn = end[1];
          stoppedAt = new Date();
        }
        const prog = /(\d+)\/(\d+) kB \((\d+)%\)/.exec(line);
        if (prog && Date.now() - lastReport > 2000) {
          lastReport = Date.now();
          void ctx
            .progress(
              5 + Number(prog[3]) * 0.7,
              `copied ${Math.round(Number(prog[1]) / 1024)} of ${Math.round(Number(prog[2]) / 1024)} MB`,
            )
            .catch(() => undefined);
        }
      },
    });
    if (!startLsn || !stopLsn || !stoppedAt)
      throw new Error('pg_basebackup finished without reporting its WAL start and end points');

    await ctx.progress(78, 'verifying with pg_verifybackup');
    const verifyStarted = Date.now();
    const manifestPath = path.join(data, 'backup_manifest');
    if (p.format === 'plain') {
      await verifyDataDir(data, manifestPath, ctx.signal);
    } else {
      try {
        await materializeDataDir(data, 'tar', verifyDir, { signal: ctx.signal });
        await verifyDataDir(verifyDir, manifestPath, ctx.signal);
      } finally {
        await fs.rm(verifyDir, { recursive: true, force: true });
      }
    }
    const verifySeconds = (Date.now() - verifyStarted) / 1000;
    await ctx.log(`pg_verifybackup: every file and the WAL match the manifest (${verifySeconds.toFixed(1)} s)`);

    await ctx.progress(95, 'publishing');
    const bytes = await treeSize(tmp);
    const sourceBytes = await manifestBytes(manifestPath);
    const finished = new Date();
    const durationMs = finished.getTime() - started.getTime();
    const manifest: BaseBackupManifest = {
      kind: 'pgmaint-base-backup',
      version: 1,
      label,
      target: p.target,
      format: p.format,
      compression: p.compression,
      systemIdentifier: info.sysid,
      serverVersion: info.version,
      timeline,
      walSegmentSize: segmentSize,
      startLsn,
      stopLsn,
      startWal: segmentName(timeline, segmentNumber(parseLsn(startLsn), segmentSize), segmentSize),
      // The end LSN points just past the last record; the segment holding it is the last needed.
      stopWal: segmentName(timeline, segmentNumber(parseLsn(stopLsn) - 1n, segmentSize), segmentSize),
      startedAt: started.toISOString(),
      stoppedAt: stoppedAt.toISOString(),
      finishedAt: finished.toISOString(),
      durationMs,
      bytes,
      sourceBytes,
      mbPerSecond:
        Math.round((sourceBytes / 1048576 / Math.max((stoppedAt.getTime() - started.getTime()) / 1000, 0.001)) * 10) /
        10,
      verified: { method: 'pg_verifybackup', seconds: verifySeconds },
      jobId: ctx.jobId,
    };
    await writeJsonAtomic(path.join(tmp, 'pgmaint.json'), manifest);
    const final = path.join(dir, label);
    await fs.rename(tmp, final);
    await fsyncPath(dir);
    await ctx.progress(
      100,
      `base backup ${label} verified: ${Math.round(bytes / 1048576)} MB on disk, ${manifest.mbPerSecond} MB/s`,
    );
    return { label, path: final, ...pick(manifest) };
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.rm(verifyDir, { recursive: true, force: true });
    throw err;
  }
}

/** The manifest fields a base-backup run reports. */
const RESULT_FIELDS = [
  'format',
  'compression',
  'startLsn',
  'stopLsn',
  'timeline',
  'startWal',
  'stopWal',
  'startedAt',
  'stoppedAt',
  'finishedAt',
  'durationMs',
  'bytes',
  'sourceBytes',
  'mbPerSecond',
] as const;

function pick(m: BaseBackupManifest) {
  const fields = Object.fromEntries(RESULT_FIELDS.map((k) => [k, m[k]])) as Pick<
    BaseBackupManifest,
    (typeof RESULT_FIELDS)[number]
  >;
  return { ...fields, verifySeconds: m.verified.seconds };
}

async function manifestBytes(manifestPath: string): Promise<number> {
  const m = JSON.parse(await fs.readFile(manifestPath, 'utf8')) as { Files?: { Size: number }[] };
  return (m.Files ?? []).reduce((a, f) => a + f.Size, 0);
}

export default job;

/** What a base-backup run returns (its result in the run history and the API). */
export type BaseBackupResult = JobResult<typeof job>;

/** pg_basebackup's --compress value: none, or client-side compression with an optional level. */
function compressSpec(compression: string, level: number | undefined): string {
  if (compression === 'none') return 'none';
  return `client-${compression}${level ? `:${level}` : ''}`;
}

/** The pgBackRest engine: `pgbackrest backup`, then `pgbackrest verify`, and the set as `info` records it. */
async function pgbackrestBackup(ctx: JobContext, type: 'full' | 'diff' | 'incr') {
  const br = new Pgbackrest(ctx.target);
  const before = new Set((await br.info(ctx.signal)).sets.map((s) => s.label));
  await ctx.progress(5, `pgbackrest backup --type=${type} (stanza ${br.stanza})`);
  await br.run(['backup', `--type=${type}`], { signal: ctx.signal, onStderrLine: (l) => void ctx.log(l) });
  const set = (await br.info(ctx.signal)).sets.find((s) => !before.has(s.label));
  if (!set) throw new Error('pgbackrest backup finished but info lists no new backup set');
  await ctx.progress(70, `verifying ${set.label} (pgbackrest verify)`);
  const verifyStarted = Date.now();
  const verdict = await br.verify(ctx.signal);
  const mine = verdict.sets.find((s) => s.label === set.label);
  if (mine?.status !== 'valid') {
    throw new PermanentJobError(
      `pgbackrest verify: backup set ${set.label} is ${mine ? `${mine.status} (${mine.detail})` : 'not in its output'}`,
      'BACKUP_INVALID',
    );
  }
  const warnings = verdict.ok
    ? []
    : [`the repository as a whole verifies as "${verdict.status}": ${verdict.archive.join('; ')}`];
  for (const w of warnings) await ctx.log(`warning: ${w}`);
  await ctx.progress(
    100,
    `backup set ${set.label} (${set.type}) verified: ${set.bytes} bytes, ${set.repositoryBytes} in the repository`,
  );
  return {
    engine: 'pgbackrest' as const,
    stanza: br.stanza,
    ...set,
    verified: {
      method: 'pgbackrest verify',
      status: mine.status,
      detail: mine.detail,
      seconds: (Date.now() - verifyStarted) / 1000,
    },
    warnings,
  };
}
