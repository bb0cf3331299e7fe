// backup: a logical dump (pg_dump, custom format) of a target into
// BACKUP_DIR/dumps/<target>/. The dump is written under a temporary name, read back
// with `pg_restore --list`, checksummed, and only then renamed into place with a
// manifest beside it. A dump without its manifest never counts as a backup.
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { PermanentJobError } from '../src/errors.ts';
import { fileStamp, publish, sha256File, writeJsonAtomic } from '../src/files.ts';
import { defineJob, targetField, type JobContext } from '../src/job-definition.ts';
import { binPath, runProcess } from '../src/proc.ts';

export const payload = z.object({
  target: targetField,
  /** pg_dump compression level for the custom format (0 = none). */
  compress: z.number().int().min(0).max(9).default(6),
});

export interface DumpManifest {
  kind: 'pgmaint-dump';
  version: 1;
  file: string;
  format: 'custom';
  target: string;
  database: string;
  serverVersion: string;
  pgDumpVersion: string;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  bytes: number;
  sha256: string;
  tables: number;
  verified: { method: 'pg_restore --list'; tocEntries: number };
  jobId: string;
}

export function dumpDir(backupDir: string, target: string): string {
  return path.join(backupDir, 'dumps', target);
}

export default defineJob({
  name: 'backup',
  description: 'pg_dump of a target (custom format), verified with pg_restore --list, sha256 manifest.',
  payload,
  defaults: { attempts: 3, backoffMs: 30_000, timeoutMs: 6 * 3_600_000, concurrency: 1 },
  // "Backup now" twice for one target while the first waits or runs returns the first.
  singletonKey: (p) => p.target,
  async handler(ctx, { target, compress }) {
    const started = new Date();
    const dir = dumpDir(ctx.config.backupDir, target);
    try {
      await fs.mkdir(dir, { recursive: true });
      await fs.access(dir, fs.constants.W_OK);
    } catch (err) {
      throw new PermanentJobError(`BACKUP_DIR: ${dir} is not writable: ${(err as Error).message}`, 'BACKUP_DIR');
    }
    // One dump per target at a time, also across workers and between a schedule and
    // an ad-hoc run; the lock goes with the session if the worker dies.
    const lockClient = await ctx.pool.connect();
    try {
      const { rows: lock } = await lockClient.query<{ ok: boolean }>(`select pg_try_advisory_lock(hashtext('pgmaint:backup')) as ok`);
      if (!lock[0]!.ok) {
        await ctx.log('another backup of this target is running; this run is skipped');
        return { skipped: 'another backup of this target is running' };
      }
      await removeLeftovers(dir, ctx);
      return await dump(ctx, target, compress, dir, started);
    } finally {
      await lockClient.query(`select pg_advisory_unlock(hashtext('pgmaint:backup'))`).catch(() => undefined);
      lockClient.release();
    }
  },
});

async function dump(ctx: JobContext, target: string, compress: number, dir: string, started: Date) {

    await ctx.progress(2, 'reading catalog');
    const { rows } = await ctx.pool.query<{ version: string; database: string; tables: string }>(
      `select current_setting('server_version') as version, current_database() as database,
              (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%') as tables`,
    );
    const info = rows[0]!;
    const tables = Number(info.tables);
    const name = `${target}-${fileStamp(started)}.dump`;
    const final = path.join(dir, name);
    const tmp = path.join(dir, `.${name}.partial`);
    const env = ctx.libpqEnv();

    try {
      await ctx.log(`pg_dump of database ${info.database} (PostgreSQL ${info.version}, ${tables} tables) into ${tmp}`);
      let dumped = 0;
      let lastReport = 0;
      await runProcess(binPath('pg_dump'), ['--format=custom', `--compress=${compress}`, '--verbose', '--no-password', `--file=${tmp}`], {
        env,
        signal: ctx.signal,
        onStderrLine: (line) => {
          if (!/dumping contents of table/.test(line)) return;
          dumped++;
          const now = Date.now();
          if (now - lastReport > 1000 || dumped === tables) {
            lastReport = now;
            void ctx.progress(5 + (80 * dumped) / Math.max(tables, 1), `dumped ${dumped}/${tables} tables`).catch(() => undefined);
          }
        },
      });

      await ctx.progress(86, 'verifying with pg_restore --list');
      const list = await runProcess(binPath('pg_restore'), ['--list', tmp], { signal: ctx.signal });
      const tocEntries = list.stdout.split('\n').filter((l) => l.trim() && !l.startsWith(';')).length;
      if (!/; Archive created at/.test(list.stdout) || tocEntries === 0) throw new Error(`pg_restore --list read no entries from ${tmp}; the dump is not usable`);

      await ctx.progress(92, 'computing sha256');
      const bytes = (await fs.stat(tmp)).size;
      const sha256 = await sha256File(tmp, ctx.signal);
      const pgDumpVersion = (await runProcess(binPath('pg_dump'), ['--version'])).stdout.trim();

      await ctx.progress(97, 'publishing dump and manifest');
      await publish(tmp, final);
      const finished = new Date();
      const manifest: DumpManifest = {
        kind: 'pgmaint-dump',
        version: 1,
        file: name,
        format: 'custom',
        target,
        database: info.database,
        serverVersion: info.version,
        pgDumpVersion,
        startedAt: started.toISOString(),
        finishedAt: finished.toISOString(),
        durationMs: finished.getTime() - started.getTime(),
        bytes,
        sha256,
        tables,
        verified: { method: 'pg_restore --list', tocEntries },
        jobId: ctx.jobId,
      };
      await writeJsonAtomic(`${final}.manifest.json`, manifest);
      await ctx.progress(100, `backup verified: ${name}, ${bytes} bytes, sha256 ${sha256.slice(0, 12)}…`);
      return { file: final, manifest: `${final}.manifest.json`, bytes, sha256, durationMs: manifest.durationMs, tables, tocEntries };
    } catch (err) {
      // Nothing half-done survives: the partial file and an unpublished dump go.
      await fs.rm(tmp, { force: true });
      const manifestExists = await fs.stat(`${final}.manifest.json`).then(() => true, () => false);
      if (!manifestExists) await fs.rm(final, { force: true });
      throw err;
    }
}

/** Partial files and manifest-less dumps left by a killed worker are removed. Only
 * files older than a minute go, so a concurrent run's fresh temp file is spared. */
async function removeLeftovers(dir: string, ctx: { log(m: string): Promise<void> }): Promise<void> {
  const entries = await fs.readdir(dir);
  const cutoff = Date.now() - 60_000;
  for (const e of entries) {
    const full = path.join(dir, e);
    const orphanDump = e.endsWith('.dump') && !entries.includes(`${e}.manifest.json`);
    if (!e.endsWith('.partial') && !orphanDump) continue;
    const st = await fs.stat(full).catch(() => undefined);
    if (st && st.mtimeMs < cutoff) {
      await fs.rm(full, { recursive: true, force: true });
      await ctx.log(`removed leftover ${e} from an interrupted run`);
    }
  }
}
