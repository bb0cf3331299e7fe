// drop-expired-partitions: retention. A partition is expired only when its catalog
// upper bound is at or before now − retention; the newest partition, the DEFAULT
// partition and anything not attached to a policy's parent are never touched. Each
// expired partition is detached (CONCURRENTLY where the parent has no DEFAULT
// partition), archived with pg_dump and verified (pg_restore --list, row count,
// sha256), and only then dropped. A detach left pending by a killed run is finalized.
import fs from 'node:fs/promises';
import path from 'node:path';
import { DateTime } from 'luxon';
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from '../src/errors.ts';
import { fileStamp, publish, sha256File, writeJsonAtomic } from '../src/files.ts';
import { defineJob, targetField, type JobContext } from '../src/job-definition.ts';
import {
  boundLiteral,
  PARENT_LOCKED,
  parseRetention,
  policiesFor,
  qualifiedName,
  quoteQualified,
  readParent,
  tablesIssues,
  recordPolicyError,
  throwIfPoliciesFailed,
  withParentLock,
  type PartitionPolicy,
  type PolicyOutcome,
} from '../src/partitions.ts';
import { binPath, runProcess } from '../src/proc.ts';

export const payload = z.object({
  target: targetField,
  tables: z.array(qualifiedName).optional(),
  /** Return the exact plan (statements) and change nothing. */
  dryRun: z.boolean().default(false),
  /** Judge expiry at this instant instead of the clock (tests, what-if). */
  now: z.iso.datetime({ offset: true }).optional(),
});

interface Step {
  partition: string;
  action: 'finalize-detach' | 'detach' | 'archive' | 'drop';
  sql?: string;
  /** For a detach: the statement that puts the partition back if its archive fails. */
  undo?: string;
}

interface Archive {
  partition: string;
  file: string;
  rows: number;
  bytes: number;
  sha256: string;
}

interface DropResult extends PolicyOutcome {
  cutoff: string | null;
  plan: Step[];
  dropped: string[];
  archives: Archive[];
  bytesFreed: number;
  skipped: { partition?: string; reason: string }[];
}

export default defineJob({
  name: 'drop-expired-partitions',
  description: 'Retention: detach, archive to a verified dump, then drop partitions past their policy retention.',
  payload,
  defaults: { attempts: 3, backoffMs: 60_000, timeoutMs: 3 * 3600_000, concurrency: 1 },
  deduplicate: true,
  checkConfig: (p, config) => tablesIssues(config.partitions, p.target, p.tables, true),
  async handler(ctx, p) {
    const policies = policiesFor(ctx, p.target, p.tables).filter((x) => x.retention);
    const now = p.now ? DateTime.fromISO(p.now) : DateTime.now();
    const results: DropResult[] = [];
    for (const [i, policy] of policies.entries()) {
      await ctx.progress((100 * i) / Math.max(policies.length, 1), `${policy.table}: ${p.dryRun ? 'planning' : 'applying retention'}`);
      results.push(await applyRetention(ctx, policy, now, p.dryRun));
    }
    for (const r of results) {
      await ctx.log(`${r.table}: ${r.error ? `FAILED: ${r.error}` : `${p.dryRun ? 'would drop' : 'dropped'} ${p.dryRun ? r.plan.filter((s) => s.action === 'drop').length : r.dropped.length}, archived ${r.archives.length}, freed ${r.bytesFreed} bytes`}`);
    }
    await ctx.progress(100, 'done');
    throwIfPoliciesFailed('drop-expired-partitions', results);
    return { dryRun: p.dryRun, policies: results };
  },
});

async function applyRetention(ctx: JobContext, policy: PartitionPolicy, now: DateTime, dryRun: boolean): Promise<DropResult> {
  const result: DropResult = { table: policy.table, cutoff: null, plan: [], dropped: [], archives: [], bytesFreed: 0, skipped: [] };
  try {
    const outcome = await withParentLock(ctx.pool, policy.table, async (client) => {
      const info = await readParent(client, policy);
      const parent = quoteQualified(info.schema, info.table);
      const cutoff = now.setZone(policy.timeZone).minus(parseRetention(policy.retention!));
      result.cutoff = cutoff.toISO();
      const hasDefault = info.partitions.some((x) => x.isDefault);
      const ranged = info.partitions.filter((x) => !x.isDefault && x.to);
      const newest = ranged.at(-1);
      const pending = info.partitions.filter((x) => x.detachPending);
      for (const x of pending) {
        result.plan.push({ partition: `${x.schema}.${x.name}`, action: 'finalize-detach', sql: `alter table ${parent} detach partition ${quoteQualified(x.schema, x.name)} finalize` });
      }
      const expired = ranged.filter((x) => !x.detachPending && x !== newest && x.to! <= cutoff);
      if (expired.length > policy.maxDropsPerRun) result.skipped.push({ reason: `${expired.length - policy.maxDropsPerRun} more expired partitions left for the next run (maxDropsPerRun ${policy.maxDropsPerRun})` });
      for (const x of [...pending, ...expired.slice(0, policy.maxDropsPerRun)]) {
        const q = quoteQualified(x.schema, x.name);
        if (!x.detachPending) {
          result.plan.push({
            partition: `${x.schema}.${x.name}`,
            action: 'detach',
            sql: `alter table ${parent} detach partition ${q}${hasDefault ? '' : ' concurrently'}`,
            undo: `alter table ${parent} attach partition ${q} for values from (${boundLiteral(x.from!, info.keyType)}) to (${boundLiteral(x.to!, info.keyType)})`,
          });
        }
        if (policy.archive) result.plan.push({ partition: `${x.schema}.${x.name}`, action: 'archive' });
        result.plan.push({ partition: `${x.schema}.${x.name}`, action: 'drop', sql: `drop table ${q}` });
      }
      if (dryRun) return;
      await execute(ctx, client, policy, result);
    });
    if (outcome === 'locked') result.skipped.push({ reason: PARENT_LOCKED });
  } catch (thrown) {
    recordPolicyError(result, thrown);
  }
  return result;
}

/** Runs the plan step by step; a partition whose archive fails is left detached, not dropped. */
async function execute(ctx: JobContext, client: pg.ClientBase, policy: PartitionPolicy, result: DropResult): Promise<void> {
  await client.query(`set lock_timeout = '${policy.lockTimeout}'`);
  try {
    const archived = new Set<string>();
    for (const step of result.plan) {
      ctx.signal.throwIfAborted();
      if (step.action === 'archive') {
        const archive = await archivePartition(ctx, client, step.partition).catch(async (err) => {
          // Nothing half-done: the partition goes back where it was, with its data.
          const undo = result.plan.find((s) => s.partition === step.partition && s.undo)?.undo;
          if (undo) await client.query(undo).then(() => ctx.log(`archive failed; re-attached ${step.partition}`));
          throw err;
        });
        result.archives.push(archive);
        archived.add(step.partition);
        await ctx.log(`archived ${step.partition}: ${archive.rows} rows, ${archive.bytes} bytes, ${archive.file}`);
        continue;
      }
      if (step.action === 'drop') {
        if (policy.archive && !archived.has(step.partition)) throw new Error(`${step.partition}: no verified archive; not dropped`);
        const [schema, name] = step.partition.split('.') as [string, string];
        result.bytesFreed += Number((await client.query('select pg_total_relation_size($1::regclass) as b', [quoteQualified(schema, name)])).rows[0].b);
      }
      // DETACH … CONCURRENTLY cannot run inside a transaction block: each statement autocommits.
      await client.query(step.sql!);
      if (step.action === 'drop') result.dropped.push(step.partition);
      await ctx.log(`${step.action}: ${step.sql}`);
    }
  } finally {
    await client.query('reset lock_timeout').catch(() => undefined);
  }
}

/** pg_dump of one detached partition, verified before it counts. */
async function archivePartition(ctx: JobContext, client: pg.ClientBase, partition: string): Promise<Archive> {
  const [schema, name] = partition.split('.') as [string, string];
  const dir = path.join(ctx.config.backupDir, 'partitions', ctx.target.name);
  await fs.mkdir(dir, { recursive: true }).catch((err) => {
    throw new PermanentJobError(`BACKUP_DIR: cannot create ${dir}: ${(err as Error).message}`);
  });
  // Detached, the table takes no more writes through the parent; this count is the dump's.
  const rows = Number((await client.query(`select count(*) as n from ${quoteQualified(schema, name)}`)).rows[0].n);
  const file = path.join(dir, `${schema}.${name}-${fileStamp()}.dump`);
  const tmp = `${file}.partial`;
  try {
    await runProcess(binPath('pg_dump'), ['--format=custom', '--no-password', `--table=${quoteQualified(schema, name)}`, `--file=${tmp}`], { env: ctx.libpqEnv(), signal: ctx.signal });
    const list = await runProcess(binPath('pg_restore'), ['--list', tmp], { signal: ctx.signal });
    // Compared as text, never as a pattern: names may hold $ and other regex characters.
    const entry = ` TABLE DATA ${schema} ${name} `;
    if (!list.stdout.split('\n').some((line) => line.includes(entry))) throw new Error(`archive of ${partition} has no TABLE DATA entry; not dropped`);
    const bytes = (await fs.stat(tmp)).size;
    const sha256 = await sha256File(tmp, ctx.signal);
    await publish(tmp, file);
    await writeJsonAtomic(`${file}.manifest.json`, { kind: 'pgmaint-partition-archive', version: 1, target: ctx.target.name, partition, rows, bytes, sha256, createdAt: new Date().toISOString(), jobId: ctx.jobId });
    return { partition, file, rows, bytes, sha256 };
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}
