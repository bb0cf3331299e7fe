// restore-dump: brings a verified dump back into a NEW database on a target's server.
// The dump is a label (its file name), the newest ("latest"), or the newest finished
// before a time; it is read from local storage or the bucket (decrypted as it streams)
// and its sha256 checked against the manifest before pg_restore -j sees it. The restore
// goes into a scratch name, its row counts are compared with the dump's, and only then
// is it renamed to the database asked for: a failed or killed restore never leaves a
// half-restored database under that name. Never the live database, never a database that
// is not empty unless clean is given; some schemas or tables into an existing database
// only with intoExisting (then in one transaction: all of it or nothing).
import pg from 'pg';
import { z } from 'zod';
import { type ListedDump, listDumps } from '../src/backup/catalog.ts';
import { fetchVerified } from '../src/backup/fetch-verified.ts';
import { refusalLine } from '../src/backup/manifest-checks.ts';
import { dumpFileName } from '../src/backup/names.ts';
import { objectStoreFor } from '../src/backup/object-store.ts';
import { backupDirOf, type Config, deploymentTag, TARGET_NAME, type TargetConfig } from '../src/core/config.ts';
import { type FieldIssue, PermanentJobError, RefusedError } from '../src/core/errors.ts';
import { libpqSettings } from '../src/core/libpq.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { qualifiedName, quoteIdent, quoteQualified, schemaName } from '../src/core/sql.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';

const databaseName = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a database name (lower-case letters, digits and _)');

export const payload = z.object({
  target: targetField,
  /** A dump's file name as `pgmaint backups` lists it, or "latest". */
  dump: z.union([z.literal('latest'), dumpFileName]).default('latest'),
  /** The newest dump finished before this time (with dump "latest"). */
  before: z.iso.datetime({ offset: true }).optional(),
  /** The database to restore into: a new one, unless clean or intoExisting. */
  database: databaseName,
  /** Target whose server gets the database (default: the dump's own target). */
  onTarget: z.string().regex(TARGET_NAME, 'must be a target name').optional(),
  /** pg_restore processes at once (pg_restore --jobs). */
  parallel: z.number().int().min(1).max(16).default(4),
  /** Replace an existing database that is not empty (the new one takes its name once restored and checked). */
  clean: z.boolean().default(false),
  /** Only these schemas, or these tables (schema.table). */
  schemas: z.array(schemaName).min(1).optional(),
  tables: z.array(qualifiedName).min(1).optional(),
  /** Restore the schemas or tables into an existing database, in one transaction. */
  intoExisting: z.boolean().default(false),
  /** Keep the dump's owners and privileges (the roles must exist); default --no-owner --no-privileges. */
  owners: z.boolean().default(false),
});
type Payload = z.output<typeof payload>;

/** Target databases on the same server as `on`: restoring over one is restoring over a live database. */
function liveDatabases(config: Config, on: TargetConfig): Map<string, string> {
  const server = (u: URL) => `${u.hostname}:${u.port || '5432'}`;
  const here = server(new URL(on.url));
  const live = new Map<string, string>();
  for (const [name, t] of config.targets) {
    const u = new URL(t.url);
    if (server(u) === here) live.set(decodeURIComponent(u.pathname.slice(1)), name);
  }
  return live;
}

function checkRequest(p: Payload, config: Config): FieldIssue[] {
  const issues: FieldIssue[] = [];
  const known = [...config.targets.keys()].join(', ');
  const on = config.targets.get(p.onTarget ?? p.target);
  if (!on) return [{ path: 'onTarget', message: `unknown target "${p.onTarget}" (known: ${known})` }];
  if (p.before && p.dump !== 'latest')
    issues.push({ path: 'before', message: 'choose a dump by its label or by a time, not both' });
  if (p.intoExisting && !p.schemas && !p.tables)
    issues.push({ path: 'intoExisting', message: 'restores only schemas or tables: give schemas or tables' });
  const live = liveDatabases(config, on).get(p.database);
  if (live && !p.intoExisting)
    issues.push({
      path: 'database',
      message:
        `"${p.database}" is the live database of target "${live}"; restore into a new database ` +
        '(or give schemas or tables with intoExisting)',
    });
  return issues;
}

const job = defineJob({
  name: 'restore-dump',
  description:
    'Restores a verified dump (a label, latest, or the newest before a time) from local storage or the bucket into ' +
    'a new database with pg_restore -j; checked against its manifest before and after.',
  payload,
  defaults: { attempts: 2, backoffMs: 30_000, timeoutMs: 12 * 3_600_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'the dumps it restores are listed there' },
    pgBinaries: { tools: ['pg_restore'], why: 'pg_restore restores the dump' },
    objectStore: { why: 'a dump whose local copy is gone is read from the bucket' },
  },
  deduplicate: true,
  checkConfig: checkRequest,
  async handler(ctx, p) {
    const chosen = await chooseDump(ctx, p);
    const m = chosen.manifest;
    await ctx.progress(2, `restoring ${m.file} (finished ${m.finishedAt}) into database ${p.database}`);
    const on = ctx.config.targets.get(p.onTarget ?? p.target)!;
    const admin = new pg.Client({ connectionString: on.url, application_name: ctx.appName });
    admin.on('error', () => undefined);
    await admin.connect();
    try {
      const tables = await tablesIn(on, ctx, p.database);
      if (p.intoExisting && tables === undefined)
        throw new RefusedError(
          'database',
          `"${p.database}" does not exist; intoExisting restores into an existing one`,
        );
      if (!p.intoExisting && tables && !p.clean)
        throw new RefusedError(
          'database',
          `"${p.database}" exists and is not empty (${tables} tables); give clean: true to replace it once the ` +
            'restore is checked, or name a new database',
        );
      const fetched = await fetchVerified(
        ctx,
        {
          name: m.file,
          localPath: chosen.path,
          object: m.object,
          sha256: m.sha256,
          directory: m.format === 'directory',
        },
        'dump',
      );
      try {
        if (p.intoExisting) return await restoreInto(ctx, p, chosen, fetched.file, fetched.source);
        return await restoreNew(ctx, p, admin, chosen, fetched.file, fetched.source, tables !== undefined);
      } finally {
        await fetched.release();
      }
    } finally {
      await admin.end().catch(() => undefined);
    }
  },
});

async function chooseDump(ctx: JobContext, p: Payload): Promise<ListedDump> {
  const store = objectStoreFor(ctx.config);
  const { dumps, refused } = await listDumps(backupDirOf(ctx.config), p.target, store).finally(() => store?.close());
  for (const r of refused) await ctx.log(refusalLine(r));
  const newest = dumps[0]?.manifest.file;
  const oldest = dumps.at(-1)?.manifest.finishedAt;
  if (p.dump !== 'latest') {
    const found = dumps.find((d) => d.manifest.file === p.dump);
    if (!found)
      throw new RefusedError(
        'dump',
        `no verified dump ${p.dump} of target "${p.target}" ` +
          `(${dumps.length} listed${newest ? `, newest ${newest}` : ''}; ` +
          'pgmaint backups lists them)',
      );
    return found;
  }
  if (p.before) {
    const at = Date.parse(p.before);
    const found = dumps.find((d) => Date.parse(d.manifest.finishedAt) < at);
    if (!found)
      throw new RefusedError(
        'before',
        `no verified dump of target "${p.target}" finished before ${p.before}` +
          (oldest ? ` (the oldest finished ${oldest})` : ' (there are none)'),
      );
    return found;
  }
  if (!dumps[0]) throw new RefusedError('dump', `no verified dump of target "${p.target}"; run backup first`);
  return dumps[0];
}

/** Tables in a database (undefined: it does not exist). */
async function tablesIn(on: TargetConfig, ctx: JobContext, database: string): Promise<number | undefined> {
  const url = new URL(on.url);
  url.pathname = `/${database}`;
  const c = new pg.Client({ connectionString: url.toString(), application_name: ctx.appName });
  c.on('error', () => undefined);
  try {
    await c.connect();
  } catch (err) {
    if ((err as { code?: string }).code === '3D000') return undefined; // invalid_catalog_name: no such database
    throw err;
  }
  try {
    const { rows } = await c.query<{ n: number }>(
      `select count(*)::int as n from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'v', 'm', 'f') and n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'`,
    );
    return rows[0]!.n;
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** pg_restore's selection: the schemas, and each table as -n schema -t name (one call per table's schema). */
function selections(p: Payload): string[][] {
  const calls: string[][] = [];
  if (p.schemas) calls.push(p.schemas.map((s) => `--schema=${s}`));
  const bySchema = new Map<string, string[]>();
  for (const t of p.tables ?? []) {
    const [s, n] = split(t);
    bySchema.set(s, [...(bySchema.get(s) ?? []), n]);
  }
  for (const [s, names] of bySchema) calls.push([`--schema=${s}`, ...names.map((n) => `--table=${n}`)]);
  return calls.length ? calls : [[]];
}

const split = (t: string): [string, string] => [t.slice(0, t.indexOf('.')), t.slice(t.indexOf('.') + 1)];

/** The manifest's row counts of the tables this restore brings back. */
function expectedRows(p: Payload, d: ListedDump): [string, number][] {
  const all = Object.entries(d.manifest.rowCounts ?? {});
  if (!p.schemas && !p.tables) return all;
  return all.filter(([t]) => p.schemas?.includes(split(t)[0]) || p.tables?.includes(t));
}

async function pgRestore(ctx: JobContext, p: Payload, on: TargetConfig, db: string, file: string, extra: string[]) {
  const settings = libpqSettings(on, ctx.appName);
  const libpq = { ...settings, env: { ...settings.env, PGDATABASE: db } };
  const owners = p.owners ? [] : ['--no-owner', '--no-privileges'];
  await runProcess(
    binPath('pg_restore'),
    [...owners, '--exit-on-error', '--no-password', `--dbname=${db}`, ...extra, file],
    {
      libpq,
      signal: ctx.signal,
    },
  ).catch((err) => {
    if (ctx.signal.aborted) throw err;
    throw new PermanentJobError(`pg_restore into ${db} failed: ${(err as Error).message}`, 'RESTORE_FAILED', {
      cause: err,
    });
  });
}

/** Counts each table in the restored database and compares with the dump's; the differences. */
async function compareRows(ctx: JobContext, on: TargetConfig, db: string, expected: [string, number][]) {
  const url = new URL(on.url);
  url.pathname = `/${db}`;
  const c = new pg.Client({ connectionString: url.toString(), application_name: ctx.appName });
  c.on('error', () => undefined);
  await c.connect();
  const differ: string[] = [];
  try {
    for (const [table, dumped] of expected) {
      const n = await c.query<{ n: string }>(`select count(*) as n from ${quoteQualified(...split(table))}`).then(
        (r) => Number(r.rows[0]!.n),
        () => -1,
      );
      if (n !== dumped) differ.push(`${table} dumped ${dumped}, restored ${n < 0 ? 'missing' : n}`);
    }
  } finally {
    await c.end().catch(() => undefined);
  }
  return differ;
}

async function restoreNew(
  ctx: JobContext,
  p: Payload,
  admin: pg.Client,
  d: ListedDump,
  file: string,
  source: string,
  replacing: boolean,
) {
  const on = ctx.config.targets.get(p.onTarget ?? p.target)!;
  // Named by deployment and job, not by attempt: a retry of a killed run drops what it left.
  const scratch = `pgmaint_restoring_${deploymentTag(ctx.config)}_${ctx.jobId.replace(/[^a-zA-Z0-9]/g, '_')}`
    .slice(0, 63)
    .toLowerCase();
  const started = Date.now();
  try {
    await admin.query(`drop database if exists ${quoteIdent(scratch)} with (force)`);
    await admin.query(`create database ${quoteIdent(scratch)} template template0`);
    for (const [i, selection] of selections(p).entries()) {
      await ctx.progress(
        10 + i,
        `pg_restore -j ${p.parallel} of ${d.manifest.file} into ${scratch} (renamed when checked)`,
      );
      await pgRestore(ctx, p, on, scratch, file, [`--jobs=${p.parallel}`, ...selection]);
    }
    const restoreSeconds = (Date.now() - started) / 1000;
    await ctx.progress(80, 'comparing row counts with the dump');
    const expected = expectedRows(p, d);
    const differ = await compareRows(ctx, on, scratch, expected);
    if (differ.length)
      throw new PermanentJobError(
        `restore of ${d.manifest.file}: ${differ.length} tables differ from the dump: ${differ.slice(0, 5).join('; ')}`,
        'ROW_COUNTS_DIFFER',
      );
    // Only a restore that is whole and checked gets the name asked for.
    if (replacing) await admin.query(`drop database ${quoteIdent(p.database)} with (force)`);
    await admin.query(`alter database ${quoteIdent(scratch)} rename to ${quoteIdent(p.database)}`);
    const rows = expected.reduce((n, [, r]) => n + r, 0);
    await ctx.progress(
      100,
      `database ${p.database} restored from ${d.manifest.file}: ${expected.length} tables, ${rows} rows equal to the ` +
        `dump's (pg_restore ${restoreSeconds.toFixed(1)} s)`,
    );
    return {
      database: p.database,
      onTarget: p.onTarget ?? p.target,
      dump: d.manifest.file,
      dumpFinishedAt: d.manifest.finishedAt,
      source,
      replaced: replacing,
      tablesCompared: expected.length,
      rows,
      rowCounts: Object.fromEntries(expected),
      restoreSeconds,
    };
  } finally {
    // Whatever went wrong, nothing half-restored stays behind (after the rename this drops nothing).
    await admin
      .query(`drop database if exists ${quoteIdent(scratch)} with (force)`)
      .catch((err) => ctx.log(`could not drop ${scratch}: ${(err as Error).message}`));
  }
}

/** Schemas or tables into an existing database, in one transaction: all of them or nothing. */
async function restoreInto(ctx: JobContext, p: Payload, d: ListedDump, file: string, source: string) {
  const on = ctx.config.targets.get(p.onTarget ?? p.target)!;
  const started = Date.now();
  const clean = p.clean ? ['--clean', '--if-exists'] : [];
  for (const selection of selections(p)) {
    await ctx.progress(10, `pg_restore --single-transaction of ${selection.join(' ')} into ${p.database}`);
    await pgRestore(ctx, p, on, p.database, file, ['--single-transaction', ...clean, ...selection]);
  }
  const expected = expectedRows(p, d);
  const differ = await compareRows(ctx, on, p.database, expected);
  if (differ.length)
    throw new PermanentJobError(
      `restore of ${d.manifest.file} into ${p.database}: ${differ.length} tables differ from the dump: ` +
        differ.slice(0, 5).join('; '),
      'ROW_COUNTS_DIFFER',
    );
  const rows = expected.reduce((n, [, r]) => n + r, 0);
  await ctx.progress(100, `restored ${expected.length} tables (${rows} rows) of ${d.manifest.file} into ${p.database}`);
  return {
    database: p.database,
    onTarget: p.onTarget ?? p.target,
    dump: d.manifest.file,
    dumpFinishedAt: d.manifest.finishedAt,
    source,
    replaced: false,
    tablesCompared: expected.length,
    rows,
    rowCounts: Object.fromEntries(expected),
    restoreSeconds: (Date.now() - started) / 1000,
  };
}

export default job;

/** What a restore-dump run returns (its result in the run history and the API). */
export type RestoreDumpResult = JobResult<typeof job>;
