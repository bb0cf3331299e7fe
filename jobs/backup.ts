// backup: a logical dump (pg_dump, custom format, or directory format with
// parallel jobs) of a target into BACKUP_DIR/dumps/<target>/. The dump is taken
// from an exported snapshot in which every table's rows are counted too (what
// restore-check compares against). It is written under a temporary name, read
// back with `pg_restore --list`, checksummed, and only then renamed into place
// with a manifest beside it. A dump without its manifest never counts as a backup.
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ensureWritableDir, runAlone } from '../src/backup/run-guard.ts';
import type pg from 'pg';
import { dumpDir, type DumpManifest } from '../src/backup/catalog.ts';
import { keyringFor } from '../src/backup/keyring.ts';
import { sealManifest } from '../src/backup/manifest-mac.ts';
import { fileStamp, publish, sha256File, sha256Tree, writeJsonAtomic } from '../src/core/files.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { quoteIdent } from '../src/core/sql.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { backupDirOf } from '../src/core/config.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { objectStoreFor, objectUrl, type StoredObject, withObjectStore } from '../src/backup/object-store.ts';

export const payload = z
  .object({
    target: targetField,
    /** The load governor's keys for this run (docs/governor.md). */
    governor: governorField,
    /** custom: one file; directory: one file per table, written by `parallel` processes at once. */
    format: z.enum(['custom', 'directory']).default('custom'),
    /** pg_dump processes at once (pg_dump --jobs; directory format only). Default 2 for directory. */
    parallel: z.number().int().min(1).max(16).optional(),
    /** Deprecated: the old name of `parallel`. */
    jobs: z.number().int().min(1).max(16).optional(),
    /** pg_dump compression level (0 = none). */
    compress: z.number().int().min(0).max(9).default(6),
  })
  .superRefine((p, ctx) => {
    if (p.jobs !== undefined && p.parallel !== undefined && p.jobs !== p.parallel) {
      ctx.addIssue({ code: 'custom', path: ['jobs'], message: 'is the old name of parallel; give only parallel' });
    }
    const parallel = p.parallel ?? p.jobs;
    if (p.format === 'custom' && parallel !== undefined && parallel > 1) {
      ctx.addIssue({
        code: 'custom',
        path: [p.parallel !== undefined ? 'parallel' : 'jobs'],
        message: 'parallel dumps need format "directory"',
      });
    }
  });

type Payload = z.output<typeof payload>;

export { dumpDir };

const job = defineJob({
  name: 'backup',
  description:
    'pg_dump of a target (custom, or directory with -j), row counts from the same snapshot, verified with ' +
    'pg_restore --list, sha256 manifest.',
  payload,
  defaults: { attempts: 3, backoffMs: 30_000, timeoutMs: 6 * 3_600_000, concurrency: 1, heavy: true },
  needs: {
    backupDir: { why: 'dumps are written there' },
    pgBinaries: { tools: ['pg_dump', 'pg_restore'], why: 'pg_dump takes the dump; pg_restore --list reads it back' },
    objectStore: { why: 'dumps are copied to the bucket' },
  },
  // "Backup now" twice for one target while the first waits or runs returns the first.
  deduplicate: true,
  checkConfig: (p, config) =>
    config.objectStore && p.format === 'directory'
      ? [{ path: 'format', message: 'directory-format dumps are not uploaded to the object store; use "custom"' }]
      : [],
  async handler(ctx, p) {
    const { target } = p;
    const started = new Date();
    const dir = dumpDir(backupDirOf(ctx.config), target);
    await ensureWritableDir(dir);
    return runAlone(ctx, 'pgmaint:backup', 'backup', async () => {
      await removeLeftovers(dir, ctx);
      return dump(ctx, p, dir, started);
    });
  },
});

type Table = { schema: string; name: string };

/** The session whose exported snapshot pg_dump reads; the rows are counted in the same snapshot. */
interface Snapshot {
  client: pg.PoolClient;
  id: string;
  pid: number;
  tables: Table[];
}

/** What verification found: the dump reads back, and its checksum. */
interface Verified {
  tocEntries: number;
  bytes: number;
  sha256: string;
  pgDumpVersion: string;
}

/** Phases: snapshot, dump and count, verify, publish. Nothing half-done survives a failure. */
async function dump(ctx: JobContext, p: Payload, dir: string, started: Date) {
  // The unit: the whole dump (pg_dump writes its file itself); its upload is paced.
  await ctx.governor.gate(`pg_dump of ${p.target}`, { readOnly: true });
  await ctx.progress(2, 'reading catalog');
  const { rows } = await ctx.pool.query<{ version: string; database: string }>(
    `select current_setting('server_version') as version, current_database() as database`,
  );
  const info = rows[0]!;
  const parallel = p.format === 'directory' ? (p.parallel ?? p.jobs ?? 2) : 1;
  const name = `${p.target}-${fileStamp(started)}.${p.format === 'directory' ? 'dumpdir' : 'dump'}`;
  const final = path.join(dir, name);
  const tmp = path.join(dir, `.${name}.partial`);
  const local = new AbortController();
  const signal = AbortSignal.any([ctx.signal, local.signal]);
  // The snapshot's session carries this run's application_name until it is given back.
  return ctx.withClient(
    async (client) => {
      try {
        const snap = await openSnapshot(ctx, client);
        await ctx.log(
          `pg_dump of database ${info.database} (PostgreSQL ${info.version}, ${snap.tables.length} tables), ` +
            `${p.format} format${parallel > 1 ? ` with ${parallel} processes` : ''}, snapshot ${snap.id}, into ${tmp}`,
        );
        const rowCounts = await dumpAndCount(ctx, p, snap, { tmp, parallel, signal, local });
        await snap.client.query('commit');
        const verified = await verifyDump(p, tmp, signal, ctx);
        return await publishDump(ctx, p, {
          name,
          tmp,
          final,
          started,
          info,
          parallel,
          tables: snap.tables.length,
          snapshot: snap.id,
          rowCounts,
          verified,
        });
      } catch (err) {
        await client.query('rollback').catch(() => undefined);
        throw await discardUnpublished(err, { dir, tmp, final });
      }
    },
    { reset: `select set_config('application_name', 'pgmaint', false)` },
  );
}

/** Nothing half-done survives a failed dump: the partial file and an unpublished dump go. Returns what to throw. */
async function discardUnpublished(err: unknown, o: { dir: string; tmp: string; final: string }): Promise<unknown> {
  await fs.rm(o.tmp, { recursive: true, force: true });
  const manifestExists = await fs.stat(`${o.final}.manifest.json`).then(
    () => true,
    () => false,
  );
  if (!manifestExists) await fs.rm(o.final, { recursive: true, force: true });
  if (/No space left on device|ENOSPC/.test(String((err as Error)?.message))) {
    // Retried with backoff: a prune-backups run or an operator may free space meanwhile.
    return new Error(
      `BACKUP_DIR: ${o.dir} is full (no space left on device); the partial dump was removed. Free space or run ` +
        `prune-backups`,
      { cause: err },
    );
  }
  return err;
}

/**
 * Opens a repeatable-read transaction and exports its snapshot: it stays exported while the
 * transaction is open, so pg_dump (and its parallel workers) and the row counts see exactly the same
 * rows. Not withTransaction: it ends only once the dump is written.
 */
async function openSnapshot(ctx: JobContext, client: pg.PoolClient): Promise<Snapshot> {
  // The run's application_name: an abort (timeout, shutdown) terminates this session too.
  await client.query('select set_config($1, $2, false)', ['application_name', ctx.appName]);
  await client.query('begin isolation level repeatable read read only');
  const { rows } = await client.query<{ id: string; pid: number }>(
    'select pg_export_snapshot() as id, pg_backend_pid() as pid',
  );
  return { client, id: rows[0]!.id, pid: rows[0]!.pid, tables: await listTables(client) };
}

/** pg_dump from the snapshot into tmp while every table's rows are counted in it; returns the counts. */
async function dumpAndCount(
  ctx: JobContext,
  p: Payload,
  snap: Snapshot,
  o: { tmp: string; parallel: number; signal: AbortSignal; local: AbortController },
): Promise<Record<string, number>> {
  const { tables } = snap;
  let dumped = 0;
  let lastReport = 0;
  const args = [
    `--format=${p.format}`,
    `--compress=${p.compress}`,
    `--snapshot=${snap.id}`,
    '--verbose',
    '--no-password',
    `--file=${o.tmp}`,
  ];
  if (o.parallel > 1) args.push(`--jobs=${o.parallel}`);
  const pgDump = runProcess(binPath('pg_dump'), args, {
    libpq: ctx.libpqSettings(),
    signal: o.signal,
    onStderrLine: (line) => {
      if (!/dumping contents of table|finished item \d+ TABLE DATA/.test(line)) return;
      dumped++;
      const now = Date.now();
      if (now - lastReport > 1000 || dumped === tables.length) {
        lastReport = now;
        void ctx
          .progress(5 + (75 * dumped) / Math.max(tables.length, 1), `dumped ${dumped}/${tables.length} tables`)
          .catch(() => undefined);
      }
    },
  });
  // A failed pg_dump cancels the counting rather than letting it run on.
  pgDump.catch(() => ctx.pool.query('select pg_cancel_backend($1)', [snap.pid]).catch(() => undefined));
  const rowCounts: Record<string, number> = {};
  try {
    for (const t of tables) {
      const { rows: c } = await snap.client.query<{ n: string }>(
        `select count(*) as n from ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
      );
      rowCounts[`${t.schema}.${t.name}`] = Number(c[0]!.n);
    }
  } catch (err) {
    o.local.abort(err);
    // pg_dump's own failure, when there is one, says more than the cancelled count.
    await pgDump;
    throw err;
  }
  await pgDump;
  return rowCounts;
}

/** Reads the dump back with `pg_restore --list` and checksums it. */
async function verifyDump(p: Payload, tmp: string, signal: AbortSignal, ctx: JobContext): Promise<Verified> {
  await ctx.progress(86, 'verifying with pg_restore --list');
  const list = await runProcess(binPath('pg_restore'), ['--list', tmp], { signal });
  const tocEntries = list.stdout.split('\n').filter((l) => l.trim() && !l.startsWith(';')).length;
  if (!/; Archive created at/.test(list.stdout) || tocEntries === 0)
    throw new Error(`pg_restore --list read no entries from ${tmp}; the dump is not usable`);

  await ctx.progress(92, 'computing sha256');
  const { bytes, sha256 } =
    p.format === 'directory'
      ? await sha256Tree(tmp, signal)
      : { bytes: (await fs.stat(tmp)).size, sha256: await sha256File(tmp, signal) };
  const pgDumpVersion = (await runProcess(binPath('pg_dump'), ['--version'])).stdout.trim();
  return { tocEntries, bytes, sha256, pgDumpVersion };
}

/**
 * Renames the dump into place, uploads it (with a bucket: it counts only once the copy there is read
 * back and matches), then writes the manifest: from then on it counts.
 */
async function publishDump(
  ctx: JobContext,
  p: Payload,
  d: {
    name: string;
    tmp: string;
    final: string;
    started: Date;
    info: { version: string; database: string };
    parallel: number;
    tables: number;
    snapshot: string;
    rowCounts: Record<string, number>;
    verified: Verified;
  },
) {
  const { name, final, verified: v } = d;
  await ctx.progress(94, 'publishing dump and manifest');
  await publish(d.tmp, final);
  const object = await uploadVerified(ctx, final, name);
  const finished = new Date();
  const manifest: DumpManifest = {
    kind: 'pgmaint-dump',
    version: 1,
    file: name,
    format: p.format,
    parallel: d.parallel,
    target: p.target,
    database: d.info.database,
    serverVersion: d.info.version,
    pgDumpVersion: v.pgDumpVersion,
    startedAt: d.started.toISOString(),
    finishedAt: finished.toISOString(),
    durationMs: finished.getTime() - d.started.getTime(),
    bytes: v.bytes,
    sha256: v.sha256,
    tables: d.tables,
    rowCounts: d.rowCounts,
    snapshot: d.snapshot,
    verified: { method: 'pg_restore --list', tocEntries: v.tocEntries },
    jobId: ctx.jobId,
    ...(object ? { object } : {}),
  };
  // Authenticated (with encryption configured) before it is written anywhere: manifest-mac.ts.
  const sealed = sealManifest(manifest, keyringFor(ctx.config));
  await writeJsonAtomic(`${final}.manifest.json`, sealed);
  // The bucket's copy of the manifest is what workers on other hosts list.
  if (object) await withObjectStore(ctx.config, (s) => s!.putJson(s!.manifestKey('dumps', p.target, name), sealed));
  // Where the dump lives from now on: what the result, the history and the board name.
  let file = final;
  if (object && !ctx.config.objectStore!.keepLocal) {
    await fs.rm(final, { recursive: true, force: true });
    file = objectUrl(object);
    await ctx.log(
      `local copy removed (objectStore.keepLocal is false): the dump is ${file}; the manifest stays as the ` +
        `catalog record`,
    );
  }
  const totalRows = Object.values(d.rowCounts).reduce((a, b) => a + b, 0);
  await ctx.progress(
    100,
    `backup verified: ${file}, ${v.bytes} bytes, ${totalRows} rows in ${d.tables} tables, sha256 ` +
      `${v.sha256.slice(0, 12)}…`,
  );
  return {
    /** The dump's name in the catalog (what restore-check's `dump` takes). */
    name,
    /** Where it is: the local file, or s3://bucket/key once the local copy is removed. */
    file,
    ...(object ? { object: objectUrl(object) } : {}),
    manifest: `${final}.manifest.json`,
    format: p.format,
    parallel: d.parallel,
    bytes: v.bytes,
    sha256: v.sha256,
    durationMs: manifest.durationMs,
    tables: d.tables,
    rows: totalRows,
    tocEntries: v.tocEntries,
  };
}

/** Tables whose data pg_dump writes: ordinary tables and partitions, temporary ones aside. */
async function listTables(client: pg.ClientBase): Promise<Table[]> {
  const { rows } = await client.query<Table>(
    `select n.nspname as schema, c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind = 'r' and c.relpersistence <> 't'
        and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%' and n.nspname
          not like 'pg\\_temp%'
      order by 1, 2`,
  );
  return rows;
}

/** Partial files and manifest-less dumps left by a killed worker are removed. Only
 * files older than a minute go, so a concurrent run's fresh temp file is spared. */
async function removeLeftovers(dir: string, ctx: { log(m: string): Promise<void> }): Promise<void> {
  const entries = await fs.readdir(dir);
  const cutoff = Date.now() - 60_000;
  for (const e of entries) {
    const full = path.join(dir, e);
    const orphanDump = (e.endsWith('.dump') || e.endsWith('.dumpdir')) && !entries.includes(`${e}.manifest.json`);
    if (!e.endsWith('.partial') && !orphanDump) continue;
    const st = await fs.stat(full).catch(() => undefined);
    if (st && st.mtimeMs < cutoff) {
      await fs.rm(full, { recursive: true, force: true });
      await ctx.log(`removed leftover ${e} from an interrupted run`);
    }
  }
}

/** Uploads a published dump to the object store (encrypted when a key is configured) and proves the copy. */
async function uploadVerified(ctx: JobContext, file: string, name: string): Promise<StoredObject | undefined> {
  const store = objectStoreFor(ctx.config);
  if (!store) return undefined;
  try {
    await ctx.progress(95, `uploading ${name} to the object store`);
    const object = await store.upload(
      file,
      store.keyFor('dumps', ctx.target.name, name),
      ctx.signal,
      ctx.governor.pacer(`upload of ${name}`, { readOnly: true }),
    );
    await ctx.log(
      `uploaded ${objectUrl(object)} and read it back: ${object.bytes} bytes, sha256 ` +
        `${object.sha256.slice(0, 12)}…${object.encryption ? `, encrypted with key ${object.encryption.keyId}` : ''}`,
    );
    return object;
  } catch (err) {
    await fs.rm(file, { recursive: true, force: true });
    throw err;
  } finally {
    store.close();
  }
}

export default job;

/** What a backup run returns (its result in the run history and the API). */
export type BackupResult = JobResult<typeof job>;
