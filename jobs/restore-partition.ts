// restore-partition: brings back a partition that drop-expired-partitions archived and
// dropped. The archive (named, or the newest that lists the partition) is read from local
// storage or the bucket, decrypted as it streams and checked against its manifest; the
// partition is restored into a new table in one transaction and its rows counted against
// the manifest. Then either it is attached to its parent again under a hold that
// retention respects until a date, or it stays a standalone table (…_restored) for audit
// queries. Every step is journaled (src/partitions/restore-journal.ts) before it happens:
// a run killed at any step is finished by the next run on the parent, and a table is
// attached only in the transaction that counted its rows. Governed (docs/governor.md): a
// unit is one partition's restore, then its count and attach; the archive's download and
// the pipe into pg_restore are paced.
import { DateTime } from 'luxon';
import type pg from 'pg';
import { z } from 'zod';
import { fetchVerified } from '../src/backup/fetch-verified.ts';
import { refusalLine } from '../src/backup/manifest-checks.ts';
import { partitionArchiveName } from '../src/backup/names.ts';
import { objectStoreFor } from '../src/backup/object-store.ts';
import { splitQualified } from '../src/backup/partition-archive.ts';
import { type ListedPartitionArchive, listPartitionArchives } from '../src/backup/partition-catalog.ts';
import { restoreArchivedTable } from '../src/backup/partition-restore.ts';
import type { Config } from '../src/core/config.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { backupDirOf } from '../src/core/config.ts';
import { type FieldIssue, PermanentJobError, RefusedError } from '../src/core/errors.ts';
import { qualifiedName, quoteIdent, quoteQualified, withTransaction } from '../src/core/sql.ts';
import { catalogPlace } from '../src/partitions/retention-journal.ts';
import { ensureHolds, recordHold } from '../src/partitions/holds.ts';
import { PARENT_LOCKED, withParentLock } from '../src/partitions/locks.ts';
import { partitionName } from '../src/partitions/periods.ts';
import {
  droppedBounds,
  ensureRestoreJournal,
  openRestores,
  type RestoreEntry,
  recordRestoring,
  setRestoreState,
} from '../src/partitions/restore-journal.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** The partition as it was archived (schema.table), e.g. sales.sale_order_p202403. */
  partition: qualifiedName.optional(),
  /** Or its parent and a period: a date in it, e.g. 2024-03 or 2024-03-01 (the parent's policy names the partition). */
  parent: qualifiedName.optional(),
  period: z
    .string()
    .regex(/^\d{4}-\d{2}(-\d{2})?$/, 'must be a date such as 2024-03 or 2024-03-01')
    .optional(),
  /** The archive's file name as `pgmaint backups` lists it; default the newest that lists the partition. */
  archive: partitionArchiveName.optional(),
  /** attach: back into its parent, held until holdUntil; standalone: a table of its own. */
  mode: z.enum(['attach', 'standalone']),
  holdUntil: z.iso.datetime({ offset: true }).optional(),
  /** standalone: the table's name (default <partition>_restored, in its schema). */
  as: qualifiedName.optional(),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});
type Payload = z.output<typeof payload>;

function checkRequest(p: Payload, config: Config): FieldIssue[] {
  const issues: FieldIssue[] = [];
  if (!p.partition === !p.parent)
    issues.push({ path: 'partition', message: 'give the partition, or its parent and a period (one of them)' });
  if (p.parent && !p.period) issues.push({ path: 'period', message: 'required with parent' });
  if (p.period && !p.parent) issues.push({ path: 'parent', message: 'required with period' });
  if (p.parent && !config.partitions.some((x) => x.table === p.parent && x.target === p.target))
    issues.push({ path: 'parent', message: `${p.parent} has no partition policy on target "${p.target}"` });
  if (p.mode === 'attach' && !p.holdUntil)
    issues.push({ path: 'holdUntil', message: 'required with mode attach: until when retention must leave it' });
  if (p.mode === 'attach' && p.holdUntil && Date.parse(p.holdUntil) <= Date.now())
    issues.push({ path: 'holdUntil', message: 'must be in the future' });
  if (p.mode === 'standalone' && p.holdUntil)
    issues.push({ path: 'holdUntil', message: 'only with mode attach (a standalone table is not retention’s)' });
  if (p.mode === 'attach' && p.as) issues.push({ path: 'as', message: 'only with mode standalone' });
  return issues;
}

/** The partition asked for, as schema.table. */
function partitionOf(p: Payload, config: Config): string {
  if (p.partition) return p.partition;
  const policy = config.partitions.find((x) => x.table === p.parent && x.target === p.target)!;
  const [schema, table] = splitQualified(policy.table);
  const from = DateTime.fromISO(p.period!, { zone: policy.timeZone });
  return `${schema}.${partitionName(table, from, policy.interval)}`;
}

const job = defineJob({
  name: 'restore-partition',
  description:
    'Restores an archived partition into a new table, checks its rows against the manifest, then attaches it under ' +
    'a hold or leaves it standalone; journaled step by step.',
  payload,
  defaults: { attempts: 3, backoffMs: 30_000, timeoutMs: 6 * 3_600_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'the partition archives it restores are listed there' },
    pgBinaries: { tools: ['pg_restore'], why: 'pg_restore restores the partition from its archive' },
    objectStore: { why: 'an archive whose local copy is gone is read from the bucket' },
  },
  deduplicate: true,
  checkConfig: checkRequest,
  async handler(ctx, p) {
    const partition = partitionOf(p, ctx.config);
    const { archive, rows, bounds } = await chooseArchive(ctx, p, partition);
    const parent = archive.manifest.parent;
    let result: (Awaited<ReturnType<typeof finish>> & { resumed: boolean }) | undefined;
    const outcome = await withParentLock(ctx.pool, parent, async (client) => {
      await ensureRestoreJournal(client);
      await ensureHolds(client);
      // First what an interrupted run left: finished (or undone) before anything new.
      for (const e of await openRestores(client, parent)) {
        await ctx.log(`${e.partitionSchema}.${e.partitionName}: finishing restore left by run ${e.jobId} (${e.state})`);
        const done = await finish(ctx, client, e);
        if (`${e.partitionSchema}.${e.partitionName}` === partition) result = { ...done, resumed: true };
      }
      if (result) return;
      const [schema, name] = splitQualified(partition);
      const standaloneAs = p.mode === 'standalone' ? (p.as ?? `${partition}_restored`) : null;
      const place = await catalogPlace(client, { partitionSchema: schema, partitionName: name });
      if (place !== 'missing')
        throw new RefusedError('partition', `${partition} exists (${place}); only a dropped partition is restored`);
      if (standaloneAs && (await exists(client, standaloneAs)))
        throw new RefusedError(p.as ? 'as' : 'partition', `${standaloneAs} exists already; name another with "as"`);
      const b = bounds ?? (await droppedBounds(client, schema, name));
      if (p.mode === 'attach' && !b)
        throw new RefusedError(
          'mode',
          `neither ${archive.file} nor the retention journal records the bounds of ${partition}; restore it standalone`,
        );
      const entry: Omit<RestoreEntry, 'id' | 'state'> = {
        parent,
        partitionSchema: schema,
        partitionName: name,
        archiveFile: archive.file,
        archiveSha256: archive.manifest.sha256,
        expectedRows: rows,
        mode: p.mode,
        standaloneAs,
        holdUntil: p.holdUntil ? new Date(p.holdUntil) : null,
        boundFrom: b?.from ?? null,
        boundTo: b?.to ?? null,
        jobId: ctx.jobId,
      };
      // Durable before pg_restore creates anything.
      const id = await recordRestoring(client, entry);
      await ctx.log(`journaled restore of ${partition} from ${archive.file} (${rows} rows, ${p.mode})`);
      result = { ...(await finish(ctx, client, { ...entry, id, state: 'restoring' }, archive)), resumed: false };
    });
    if (outcome === 'locked') throw new PermanentJobError(`${parent}: ${PARENT_LOCKED}; try again`, 'PARENT_LOCKED');
    await ctx.progress(100, `${result!.table}: ${result!.rows} rows restored, ${result!.mode}`);
    return result!;
  },
});

async function exists(client: pg.ClientBase, table: string): Promise<boolean> {
  const { rows } = await client.query('select to_regclass($1) is not null as ok', [
    quoteQualified(...splitQualified(table)),
  ]);
  return rows[0].ok;
}

async function chooseArchive(ctx: JobContext, p: Payload, partition: string) {
  const store = objectStoreFor(ctx.config);
  const { archives, refused } = await listPartitionArchives(backupDirOf(ctx.config), p.target, store).finally(() =>
    store?.close(),
  );
  for (const r of refused) await ctx.log(refusalLine(r));
  const lists = (a: ListedPartitionArchive) => a.manifest.partitions.find((x) => x.partition === partition);
  let archive: ListedPartitionArchive | undefined;
  if (p.archive) {
    archive = archives.find((a) => a.file === p.archive);
    if (!archive) throw new RefusedError('archive', `no partition archive ${p.archive} of target "${p.target}"`);
    if (!lists(archive)) throw new RefusedError('archive', `${p.archive} does not hold ${partition}`);
  } else {
    archive = archives.find(lists);
    if (!archive)
      throw new RefusedError(
        p.partition ? 'partition' : 'period',
        `no partition archive of target "${p.target}" holds ${partition} (${archives.length} archives; ` +
          'pgmaint backups lists them)',
      );
  }
  const listed = lists(archive)!;
  const bounds = listed.from && listed.to ? { from: listed.from, to: listed.to } : undefined;
  return { archive, rows: listed.rows, bounds };
}

/** Takes a journaled restore from where it stands to its end: restored, counted, then attached or renamed. */
async function finish(ctx: JobContext, client: pg.ClientBase, e: RestoreEntry, archive?: ListedPartitionArchive) {
  const partition = `${e.partitionSchema}.${e.partitionName}`;
  const q = quoteQualified(e.partitionSchema, e.partitionName);
  // Units: the restore, then the count and attach. While held the run keeps its session: it holds the
  // parent's advisory lock, which keeps retention and other restores off the parent meanwhile.
  if (e.state === 'restoring') {
    await ctx.governor.gate(`restore ${partition}`);
    // pg_restore ran in one transaction: the table is there whole, or not at all.
    if ((await catalogPlace(client, e)) === 'missing') {
      const a = archive ?? (await archiveOf(ctx, e));
      const fetched = await fetchVerified(
        ctx,
        { name: a.file, localPath: a.localPath, object: a.manifest.object, sha256: a.manifest.sha256 },
        'partition archive',
      );
      try {
        await ctx.progress(30, `pg_restore of ${partition} from ${fetched.source}`);
        await restoreArchivedTable(ctx, fetched.file, partition);
      } finally {
        await fetched.release();
      }
    }
    await setRestoreState(client, e.id, 'restored', ctx.jobId);
    await ctx.log(`restored ${partition} as a table of its own (not attached)`);
  }
  await ctx.governor.gate(`${e.mode} ${partition}`);
  await ctx.progress(70, `counting the rows of ${partition}`);
  const counted = await countRows(client, q);
  if (counted !== e.expectedRows) {
    // Not what was archived: never attached, never kept.
    await withTransaction(client, async () => {
      await client.query(`drop table if exists ${q}`);
      await setRestoreState(client, e.id, 'failed', ctx.jobId);
    });
    throw new PermanentJobError(
      `${partition}: restored ${counted} rows, the manifest of ${e.archiveFile} says ${e.expectedRows}; dropped`,
      'ROW_COUNTS_DIFFER',
    );
  }
  let table = partition;
  await withTransaction(client, async () => {
    if (e.mode === 'attach') {
      // Counted again in the transaction that attaches it: nothing half-restored is ever attached.
      await client.query(`lock table ${q} in access exclusive mode`);
      if ((await countRows(client, q)) !== e.expectedRows) throw new Error(`${partition}: rows changed; not attached`);
      await recordHold(client, {
        parent: e.parent,
        schema: e.partitionSchema,
        name: e.partitionName,
        until: e.holdUntil!.toISOString(),
        jobId: ctx.jobId,
      });
      await client.query(
        `alter table ${quoteQualified(...splitQualified(e.parent))} attach partition ${q} ` +
          `for values from (${e.boundFrom}) to (${e.boundTo})`,
      );
    } else {
      const [schema, name] = splitQualified(e.standaloneAs!);
      if (schema !== e.partitionSchema) await client.query(`alter table ${q} set schema ${quoteIdent(schema)}`);
      if (name !== e.partitionName)
        await client.query(`alter table ${quoteQualified(schema, e.partitionName)} rename to ${quoteIdent(name)}`);
      table = e.standaloneAs!;
    }
    await setRestoreState(client, e.id, 'done', ctx.jobId);
  });
  await ctx.log(
    e.mode === 'attach'
      ? `attached ${partition} to ${e.parent}, held from retention until ${e.holdUntil!.toISOString()}`
      : `${partition} restored as ${table}, a table of its own`,
  );
  return {
    partition,
    parent: e.parent,
    table,
    mode: e.mode,
    rows: counted,
    archive: e.archiveFile,
    holdUntil: e.holdUntil?.toISOString() ?? null,
  };
}

const countRows = async (client: pg.ClientBase, q: string) =>
  Number((await client.query(`select count(*) as n from ${q}`)).rows[0].n);

/** The archive a journaled restore names, found again (a resumed run) and checked against the journal's sha256. */
async function archiveOf(ctx: JobContext, e: RestoreEntry): Promise<ListedPartitionArchive> {
  const store = objectStoreFor(ctx.config);
  const { archives } = await listPartitionArchives(backupDirOf(ctx.config), ctx.target.name, store).finally(() =>
    store?.close(),
  );
  const a = archives.find((x) => x.file === e.archiveFile && x.manifest.sha256 === e.archiveSha256);
  if (!a) throw new PermanentJobError(`${e.archiveFile}: the archive the restore journal names is gone`, 'NO_ARCHIVE');
  return a;
}

export default job;

/** What a restore-partition run returns (its result in the run history and the API). */
export type RestorePartitionResult = JobResult<typeof job>;
