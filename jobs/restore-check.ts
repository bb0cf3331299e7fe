// restore-check: proof that a logical dump restores. The newest verified dump (or
// the one named) is checksummed against its manifest, restored with `pg_restore -j`
// into a scratch database, and every table's row count compared with the count
// taken in the dump's own snapshot. The scratch database is dropped whatever
// happens; the verdict is written beside the dump (<dump>.restore-check.json).
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import pg from 'pg';
import { dumpDir, type ListedDump, listDumps, type RestoreCheckRecord } from '../src/backup/catalog.ts';
import { refusalLine } from '../src/backup/manifest-checks.ts';
import { dumpFileName } from '../src/backup/names.ts';
import { objectStoreFor } from '../src/backup/object-store.ts';
import { backupDirOf, deploymentTag } from '../src/core/config.ts';
import { libpqSettings } from '../src/core/libpq.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { sha256File, sha256Tree, writeJsonAtomic } from '../src/core/files.ts';
import { pathInside } from '../src/core/paths.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';
import { quoteIdent } from '../src/core/sql.ts';
import { binPath, runProcess } from '../src/core/proc.ts';

export const payload = z.object({
  target: targetField,
  /** Dump file name (as listed by GET /api/backups); default the newest. */
  dump: dumpFileName.optional(),
  /** pg_restore processes at once (pg_restore --jobs). */
  parallel: z.number().int().min(1).max(16).default(2),
  /** Target whose server gets the scratch database (default: the dump's own target). Needs CREATEDB. */
  scratchTarget: z
    .string()
    .regex(/^[a-z][a-z0-9_-]{0,62}$/, 'must be a target name')
    .optional(),
});

const job = defineJob({
  name: 'restore-check',
  description:
    'Restores the newest dump into a scratch database with pg_restore -j and compares row counts with those ' +
    'recorded at dump time.',
  payload,
  defaults: { attempts: 2, backoffMs: 60_000, timeoutMs: 6 * 3_600_000, concurrency: 1, heavy: true },
  needs: {
    backupDir: { why: 'the dumps it checks, and its verdicts, are there' },
    pgBinaries: { tools: ['pg_restore'], why: 'pg_restore restores the dump into a scratch database' },
    objectStore: { why: 'a dump whose local copy is gone is read from the bucket' },
  },
  deduplicate: true,
  checkConfig: (p, config) =>
    p.scratchTarget && !config.targets.has(p.scratchTarget)
      ? [
          {
            path: 'scratchTarget',
            message: `unknown target "${p.scratchTarget}" (known: ${[...config.targets.keys()].join(', ')})`,
          },
        ]
      : [],
  async handler(ctx, p) {
    const catalogStore = objectStoreFor(ctx.config);
    const { dumps, refused } = await listDumps(backupDirOf(ctx.config), p.target, catalogStore).finally(() =>
      catalogStore?.close(),
    );
    for (const r of refused) await ctx.log(refusalLine(r));
    const chosen = p.dump ? dumps.find((d) => d.manifest.file === p.dump) : dumps[0];
    if (!chosen)
      throw new PermanentJobError(
        (p.dump
          ? `dump: no verified dump ${p.dump} of target "${p.target}"`
          : `no verified dump of target "${p.target}"; run backup first`) +
          (refused.length
            ? ` (${refused.length} manifests refused, see the run's log; the first: ${refusalLine(refused[0]!)})`
            : ''),
        'NO_DUMP',
      );
    const m = chosen.manifest;
    if (!m.rowCounts)
      throw new PermanentJobError(
        `dump ${m.file} was made before row counts were recorded; it can be restored but not compared`,
        'NO_ROW_COUNTS',
      );

    // With a copy in the object store the check reads that copy: it is the one a lost host leaves.
    const store = m.object ? objectStoreFor(ctx.config) : undefined;
    if (m.object && !store) {
      throw new PermanentJobError(
        `dump ${m.file} is in s3://${m.object.bucket} but objectStore is not configured`,
        'NO_STORE',
      );
    }
    const scratchDir = ctx.config.backups.scratchDir ?? os.tmpdir();
    const dumpFile = store
      ? path.join(scratchDir, `.pgmaint-restore-check-${deploymentTag(ctx.config)}-${ctx.jobId}.dump`)
      : chosen.path;
    try {
      if (store) {
        await ctx.progress(2, `downloading s3://${m.object!.bucket}/${m.object!.key}`);
        await fs.mkdir(scratchDir, { recursive: true });
        await store.download(m.object!, dumpFile, ctx.signal).catch((err: Error) => {
          throw new PermanentJobError(`dump ${m.file}: ${err.message}`, 'DUMP_DAMAGED');
        });
      }
      return await checkDump(ctx, p, chosen, dumpFile);
    } finally {
      store?.close();
      if (store) await fs.rm(dumpFile, { force: true });
    }
  },
});

async function checkDump(ctx: JobContext, p: z.output<typeof payload>, chosen: ListedDump, dumpFile: string) {
  const m = chosen.manifest;
  await ctx.progress(5, `checking the sha256 of ${m.file}`);
  const actual =
    m.format === 'directory' ? (await sha256Tree(dumpFile, ctx.signal)).sha256 : await sha256File(dumpFile, ctx.signal);
  if (actual !== m.sha256)
    throw new PermanentJobError(
      `dump ${m.file} is damaged: sha256 ${actual.slice(0, 16)}… differs from its manifest's ` +
        `${m.sha256.slice(0, 16)}…`,
      'DUMP_DAMAGED',
    );

  const scratchTarget = ctx.config.targets.get(p.scratchTarget ?? p.target);
  if (!scratchTarget)
    throw new PermanentJobError(`scratchTarget: unknown target "${p.scratchTarget}"`, 'UNKNOWN_TARGET');
  const admin = new pg.Client({
    connectionString: scratchTarget.url,
    application_name: ctx.appName,
  });
  // Named by deployment and job, not by attempt: a retry drops what a killed attempt left.
  const scratchDb = `pgmaint_restore_check_${deploymentTag(ctx.config)}_${ctx.jobId.replace(/[^a-zA-Z0-9]/g, '_')}`
    .slice(0, 63)
    .toLowerCase();
  // An abort terminates this session (it carries the run's application_name).
  admin.on('error', () => undefined);
  await admin.connect();
  const started = Date.now();
  try {
    await admin.query(`drop database if exists ${quoteIdent(scratchDb)} with (force)`);
    await admin.query(`create database ${quoteIdent(scratchDb)} template template0`);
    await ctx.progress(10, `pg_restore -j ${p.parallel} of ${m.file} into scratch database ${scratchDb}`);
    const onScratchTarget = libpqSettings(scratchTarget, ctx.appName);
    const libpq = { ...onScratchTarget, env: { ...onScratchTarget.env, PGDATABASE: scratchDb } };
    await runProcess(
      binPath('pg_restore'),
      [
        '--no-owner',
        '--no-privileges',
        `--jobs=${p.parallel}`,
        '--exit-on-error',
        '--no-password',
        `--dbname=${scratchDb}`,
        dumpFile,
      ],
      { libpq, signal: ctx.signal },
    ).catch((err) => {
      throw new PermanentJobError(`dump ${m.file} does not restore: ${(err as Error).message}`, 'RESTORE_FAILED', {
        cause: err,
      });
    });
    const restoreSeconds = (Date.now() - started) / 1000;

    await ctx.progress(80, 'comparing row counts');
    const url = new URL(scratchTarget.url);
    url.pathname = `/${scratchDb}`;
    const restored = new pg.Client({ connectionString: url.toString(), application_name: ctx.appName });
    restored.on('error', () => undefined);
    await restored.connect();
    const mismatches: RestoreCheckRecord['mismatches'] = [];
    try {
      for (const [table, dumped] of Object.entries(m.rowCounts!)) {
        const [schema, name] = splitQualified(table);
        const n = await restored
          .query<{ n: string }>(`select count(*) as n from ${quoteIdent(schema)}.${quoteIdent(name)}`)
          .then(
            (r) => Number(r.rows[0]!.n),
            () => -1,
          );
        if (n !== dumped) mismatches.push({ table, dumped, restored: n });
      }
    } finally {
      await restored.end().catch(() => undefined);
    }
    const record: RestoreCheckRecord = {
      checkedAt: new Date().toISOString(),
      ok: mismatches.length === 0,
      tablesCompared: Object.keys(m.rowCounts!).length,
      mismatches,
      restoreSeconds,
      jobId: ctx.jobId,
    };
    // The verdict's path comes from the manifest's name: proven inside the dump directory first.
    const dir = dumpDir(backupDirOf(ctx.config), p.target);
    await fs.mkdir(dir, { recursive: true });
    await writeJsonAtomic(await pathInside(dir, `${m.file}.restore-check.json`, `dump ${m.file}`), record);
    // In the bucket too, where every worker's catalog reads it.
    const store = m.object ? objectStoreFor(ctx.config) : undefined;
    if (store) {
      const key = store.manifestKey('dumps', p.target, m.file).replace(/\.manifest\.json$/, '.restore-check.json');
      await store.putJson(key, record).finally(() => store.close());
    }
    if (!record.ok) {
      const list = mismatches
        .slice(0, 5)
        .map((x) => `${x.table} dumped ${x.dumped}, restored ${x.restored < 0 ? 'missing' : x.restored}`);
      throw new PermanentJobError(
        `restore-check of ${m.file}: ${mismatches.length} tables differ: ${list.join('; ')}`,
        'ROW_COUNTS_DIFFER',
      );
    }
    const rows = Object.values(m.rowCounts!).reduce((a, b) => a + b, 0);
    await ctx.progress(
      100,
      `${m.file} restores: ${record.tablesCompared} tables, ${rows} rows match the dump's snapshot (restore ` +
        `${restoreSeconds.toFixed(1)} s)`,
    );
    return {
      dump: m.file,
      dumpFinishedAt: m.finishedAt,
      tablesCompared: record.tablesCompared,
      rows,
      restoreSeconds,
      scratchDatabase: scratchDb,
    };
  } finally {
    await admin
      .query(`drop database if exists ${quoteIdent(scratchDb)} with (force)`)
      .catch((err) => ctx.log(`could not drop scratch database ${scratchDb}: ${(err as Error).message}`));
    await admin.end().catch(() => undefined);
  }
}

/** "schema.table" as recorded in the manifest (names may hold dots only when quoted; we split on the first). */
function splitQualified(t: string): [string, string] {
  const i = t.indexOf('.');
  return [t.slice(0, i), t.slice(i + 1)];
}

export default job;

/** What a restore-check run returns (its result in the run history and the API). */
export type RestoreCheckResult = JobResult<typeof job>;
