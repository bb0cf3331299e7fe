// drop-expired-partitions: retention. A partition is expired only when its catalog
// upper bound is at or before now − retention; the newest partition, the DEFAULT
// partition and anything not attached to a policy's parent are never touched. Each
// expired partition is detached (CONCURRENTLY where the parent has no DEFAULT
// partition); the run's detached partitions are archived by one pg_dump and verified
// (src/backup/partition-archive.ts), and only then dropped. Every step is journaled
// (src/partitions/retention-journal.ts) before it happens, so a run killed at any step
// is finished by the next: a pending detach is finalized, a detached table is archived
// and dropped (or re-attached).
import { DateTime } from 'luxon';
import type pg from 'pg';
import { z } from 'zod';
import {
  type Archive,
  archivePartitions,
  type ProvenArchives,
  reusableArchive,
  splitQualified,
  writtenFile,
} from '../src/backup/partition-archive.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { governorField } from '../src/core/governor-policy.ts';
import type { Config } from '../src/core/config.ts';
import { parseRetention, type PartitionPolicy } from '../src/core/partition-policy.ts';
import { qualifiedName, quoteQualified, withTransaction } from '../src/core/sql.ts';
import { boundLiteral, readParent } from '../src/partitions/catalog.ts';
import { heldPartitions } from '../src/partitions/holds.ts';
import { PARENT_LOCKED, withParentLock } from '../src/partitions/locks.ts';
import {
  policiesFor,
  tablesIssues,
  recordPolicyEnd,
  throwIfPoliciesFailed,
  type PolicyOutcome,
} from '../src/partitions/policies.ts';
import {
  catalogPlace,
  ensureJournal,
  openEntries,
  recordDetaching,
  setState,
  type JournalEntry,
} from '../src/partitions/retention-journal.ts';

export const payload = z.object({
  target: targetField,
  tables: z.array(qualifiedName).optional(),
  /** Return the exact plan (statements) and change nothing. */
  dryRun: z.boolean().default(false),
  /** Judge expiry at this instant instead of the clock (tests, what-if). */
  now: z.iso.datetime({ offset: true }).optional(),
  governor: governorField, // the load governor's keys for this run (docs/governor.md)
});

interface Step {
  partition: string;
  action: 'close-journal' | 'finalize-detach' | 'detach' | 'archive' | 'reattach' | 'drop';
  sql?: string;
  /** For an archive: the statement that puts the partition back if the archive fails. */
  undo?: string;
  /** Why a step resumes an earlier run's work, or closes its journal entry. */
  note?: string;
}

interface DropResult extends PolicyOutcome {
  cutoff: string | null;
  plan: Step[];
  dropped: string[];
  archives: Archive[];
  bytesFreed: number;
  skipped: { partition?: string; reason: string }[];
}

/** Some policy drops partitions (it has a retention) and archives them first. */
const archivesPartitions = (config: Config) => config.partitions.some((p) => p.retention !== undefined && p.archive);

const job = defineJob({
  name: 'drop-expired-partitions',
  description: 'Retention: detach, archive to a verified dump, then drop partitions past their policy retention.',
  payload,
  defaults: { attempts: 3, backoffMs: 60_000, timeoutMs: 3 * 3600_000, concurrency: 1, heavy: true },
  // Only a policy that archives (archive: true, the default) writes files and runs tools.
  needs: {
    backupDir: { why: 'its partition archives are written there', when: archivesPartitions },
    pgBinaries: {
      tools: ['pg_dump', 'pg_restore'],
      why: 'pg_dump archives the partitions; pg_restore reads the archive back',
      when: archivesPartitions,
    },
    objectStore: { why: 'partition archives are copied to the bucket', when: archivesPartitions },
  },
  deduplicate: true,
  checkConfig: (p, config) => tablesIssues(config.partitions, p.target, p.tables, true),
  async handler(ctx, p) {
    const policies = policiesFor(ctx, p.target, p.tables).filter((x) => x.retention);
    const now = p.now ? DateTime.fromISO(p.now) : DateTime.now();
    const results: DropResult[] = [];
    for (const [i, policy] of policies.entries()) {
      await ctx.progress(
        (100 * i) / Math.max(policies.length, 1),
        `${policy.table}: ${p.dryRun ? 'planning' : 'applying retention'}`,
      );
      results.push(await applyRetention(ctx, policy, now, p.dryRun));
    }
    for (const r of results) {
      await ctx.log(
        `${r.table}: ${
          r.error
            ? `FAILED: ${r.error}`
            : `${p.dryRun ? 'would drop' : 'dropped'} ` +
              `${p.dryRun ? r.plan.filter((s) => s.action === 'drop').length : r.dropped.length}, ` +
              `archived ${r.archives.length}, freed ${r.bytesFreed} bytes`
        }`,
      );
    }
    await ctx.progress(100, 'done');
    throwIfPoliciesFailed('drop-expired-partitions', results);
    return { dryRun: p.dryRun, policies: results };
  },
});

/** What the plan knows of a partition beyond its steps: its journal entry and bounds. */
interface Held {
  journal?: JournalEntry;
  bounds?: { from: string; to: string; upper: Date };
  closeAs?: 'dropped' | 'reattached';
}

async function applyRetention(
  ctx: JobContext,
  policy: PartitionPolicy,
  now: DateTime,
  dryRun: boolean,
): Promise<DropResult> {
  const result: DropResult = {
    table: policy.table,
    cutoff: null,
    plan: [],
    dropped: [],
    archives: [],
    bytesFreed: 0,
    skipped: [],
  };
  try {
    const outcome = await withParentLock(ctx.pool, policy.table, async (client) => {
      if (!dryRun) await ensureJournal(client);
      const info = await readParent(client, policy);
      const parent = quoteQualified(info.schema, info.table);
      const cutoff = now.setZone(policy.timeZone).minus(parseRetention(policy.retention!));
      result.cutoff = cutoff.toISO();
      const held = new Map<string, Held>();
      const attachSql = (q: string, from: string, to: string) =>
        `alter table ${parent} attach partition ${q} for values from (${from}) to (${to})`;

      // Detaches first, then one archive of everything detached, then the drops.
      const archives: Step[] = [];
      const drops: Step[] = [];
      // First the work an earlier run left unfinished, found through the journal.
      for (const e of await openEntries(client, policy.table)) {
        const key = `${e.partitionSchema}.${e.partitionName}`;
        const q = quoteQualified(e.partitionSchema, e.partitionName);
        const place = await catalogPlace(client, e);
        held.set(key, { journal: e });
        if (place === 'missing' || place === 'attached') {
          held.get(key)!.closeAs = place === 'missing' ? 'dropped' : 'reattached';
          result.plan.push({
            partition: key,
            action: 'close-journal',
            note: place === 'missing' ? 'the partition no longer exists' : 'the detach never happened; still attached',
          });
        } else if (place === 'detached' && e.upperBound.getTime() > cutoff.toMillis()) {
          result.plan.push({
            partition: key,
            action: 'reattach',
            sql: attachSql(q, e.boundFrom, e.boundTo),
            note: 'left detached by an interrupted run; no longer expired under this policy',
          });
        } else if (place === 'detached') {
          const note = `left detached by interrupted run ${e.jobId} (${e.state}); finishing it`;
          if (policy.archive)
            archives.push({ partition: key, action: 'archive', undo: attachSql(q, e.boundFrom, e.boundTo), note });
          drops.push({ partition: key, action: 'drop', sql: `drop table ${q}`, note });
        }
      }

      const hasDefault = info.partitions.some((x) => x.isDefault);
      const ranged = info.partitions.filter((x) => !x.isDefault && x.to);
      const newest = ranged.at(-1);
      const pending = ranged.filter((x) => x.detachPending);
      // A partition restore-partition attached under a hold stays until the hold ends.
      const holds = await heldPartitions(client, policy.table, now.toJSDate());
      const isHeld = (x: { schema: string; name: string }) => holds.has(`${x.schema}.${x.name}`);
      const pastCutoff = ranged.filter((x) => !x.detachPending && x !== newest && x.to! <= cutoff);
      for (const x of pastCutoff.filter(isHeld))
        result.skipped.push({
          partition: `${x.schema}.${x.name}`,
          reason: `held until ${holds.get(`${x.schema}.${x.name}`)} (restore-partition)`,
        });
      const expired = pastCutoff.filter((x) => !isHeld(x));
      if (expired.length > policy.maxDropsPerRun)
        result.skipped.push({
          reason:
            `${expired.length - policy.maxDropsPerRun} more expired partitions left for the next run ` +
            `(maxDropsPerRun ${policy.maxDropsPerRun})`,
        });
      for (const x of [...pending, ...expired.slice(0, policy.maxDropsPerRun)]) {
        const key = `${x.schema}.${x.name}`;
        const q = quoteQualified(x.schema, x.name);
        const from = boundLiteral(x.from!, info.keyType);
        const to = boundLiteral(x.to!, info.keyType);
        held.set(key, { ...held.get(key), bounds: { from, to, upper: x.to!.toJSDate() } });
        if (x.detachPending)
          result.plan.push({
            partition: key,
            action: 'finalize-detach',
            sql: `alter table ${parent} detach partition ${q} finalize`,
          });
        else
          result.plan.push({
            partition: key,
            action: 'detach',
            sql: `alter table ${parent} detach partition ${q}${hasDefault ? '' : ' concurrently'}`,
          });
        if (policy.archive) archives.push({ partition: key, action: 'archive', undo: attachSql(q, from, to) });
        drops.push({ partition: key, action: 'drop', sql: `drop table ${q}` });
      }
      result.plan.push(...archives, ...drops);
      if (dryRun) return;
      await execute(ctx, client, policy, result, held);
    });
    if (outcome === 'locked') result.skipped.push({ reason: PARENT_LOCKED });
  } catch (thrown) {
    recordPolicyEnd(result, thrown);
  }
  return result;
}

/** The open journal entry's id of a partition the plan holds. */
const journalId = (held: Map<string, Held>, key: string) => held.get(key)?.journal?.id;

/**
 * Runs the plan step by step, each journaled before it happens: a partition whose
 * archive fails goes back into its parent; a drop and its journal entry commit together.
 */
async function execute(
  ctx: JobContext,
  client: pg.ClientBase,
  policy: PartitionPolicy,
  result: DropResult,
  held: Map<string, Held>,
): Promise<void> {
  await client.query(`set lock_timeout = '${policy.lockTimeout}'`);
  try {
    const archived = new Set<string>();
    for (const step of result.plan) {
      ctx.signal.throwIfAborted();
      if (step.action !== 'close-journal' && !(step.action === 'archive' && archived.has(step.partition)))
        await ctx.governor.gate(`${step.action} ${step.partition}`); // a unit: a partition's step, or the archive
      const h = held.get(step.partition) ?? {};
      const [schema, name] = splitQualified(step.partition);
      switch (step.action) {
        case 'close-journal':
          await setState(client, journalId(held, step.partition)!, h.closeAs!, ctx.jobId);
          held.set(step.partition, { ...h, journal: undefined });
          break;
        case 'detach':
        case 'finalize-detach': {
          let id = journalId(held, step.partition);
          if (!id) {
            // Durable before the DETACH: a kill right after it leaves a plain table the journal still names.
            id = await recordDetaching(client, {
              parent: policy.table,
              partitionSchema: schema,
              partitionName: name,
              boundFrom: h.bounds!.from,
              boundTo: h.bounds!.to,
              upperBound: h.bounds!.upper,
              jobId: ctx.jobId,
            });
            held.set(step.partition, { ...h, journal: { id, state: 'detaching' } as JournalEntry });
          }
          // DETACH … CONCURRENTLY cannot run inside a transaction block: it autocommits.
          await client.query(step.sql!);
          await setState(client, id, 'detached', ctx.jobId);
          break;
        }
        case 'archive': {
          if (archived.has(step.partition)) continue;
          // The plan's archive steps are consecutive: they are done together, by one pg_dump.
          const batch = result.plan.filter((x) => x.action === 'archive');
          await archiveBatch(ctx, client, policy, batch, held, result, archived);
          continue;
        }
        case 'reattach':
          await client.query(step.sql!);
          await setState(client, journalId(held, step.partition)!, 'reattached', ctx.jobId);
          break;
        case 'drop': {
          if (policy.archive && !archived.has(step.partition))
            throw new Error(`${step.partition}: no verified archive; not dropped`);
          await withTransaction(client, async () => {
            result.bytesFreed += Number(
              (await client.query('select pg_total_relation_size($1::regclass) as b', [quoteQualified(schema, name)]))
                .rows[0].b,
            );
            await client.query(step.sql!);
            await setState(client, journalId(held, step.partition)!, 'dropped', ctx.jobId);
          });
          result.dropped.push(step.partition);
          break;
        }
      }
      await ctx.log(`${step.action}: ${step.sql ?? step.partition}${step.note ? ` (${step.note})` : ''}`);
    }
  } finally {
    await client.query('reset lock_timeout').catch(() => undefined);
  }
}

/**
 * Archives the plan's partitions: those an interrupted run archived are re-verified and
 * reused, the rest go into one pg_dump. If that fails, each goes back into its parent.
 * All become "archived" in the journal at once.
 */
async function archiveBatch(
  ctx: JobContext,
  client: pg.ClientBase,
  policy: PartitionPolicy,
  batch: Step[],
  held: Map<string, Held>,
  result: DropResult,
  archived: Set<string>,
): Promise<void> {
  const proven: ProvenArchives = new Map();
  const reused: Archive[] = [];
  for (const step of batch) {
    const earlier = await reusableArchive(ctx, step.partition, held.get(step.partition)?.journal, proven);
    if (earlier) reused.push(earlier);
  }
  const rest = batch.filter((x) => !reused.some((a) => a.partition === x.partition));
  const made = rest.length
    ? await archivePartitions(
        ctx,
        client,
        policy.table,
        rest.map((x) => x.partition),
        boundsOf(held, rest),
      ).catch(async (err) => {
        // Nothing half-done: the partitions go back where they were, with their data. One
        // that cannot (the session is gone) stays detached under its journal entry, and the
        // next run finishes it; the archive's error is still the one the run reports.
        for (const step of rest) {
          if (!step.undo) continue;
          try {
            await client.query(step.undo);
            await setState(client, journalId(held, step.partition)!, 'reattached', ctx.jobId);
            await ctx.log(`archive failed; re-attached ${step.partition}`);
          } catch (undoErr) {
            await ctx.log(
              `archive failed; re-attaching ${step.partition} failed or was not recorded ` +
                `(${(undoErr as Error).message}): the next run finds it from the journal and finishes it`,
            );
          }
        }
        throw err;
      })
    : [];
  await withTransaction(client, async () => {
    for (const a of [...reused, ...made])
      await setState(client, journalId(held, a.partition)!, 'archived', ctx.jobId, {
        file: writtenFile(a),
        sha256: a.sha256,
      });
  });
  for (const a of [...reused, ...made]) {
    result.archives.push(a);
    archived.add(a.partition);
    await ctx.log(
      `${reused.includes(a) ? 'verified earlier archive of' : 'archived'} ${a.partition}: ${a.rows} rows, in ` +
        `${a.file} (${a.bytes} bytes)`,
    );
  }
}

/** Each partition's bounds as SQL literals (the plan's, or the journal's for a resumed one), for its manifest. */
function boundsOf(held: Map<string, Held>, steps: Step[]): Map<string, { from: string; to: string }> {
  const bounds = new Map<string, { from: string; to: string }>();
  for (const { partition } of steps) {
    const h = held.get(partition);
    const from = h?.bounds?.from ?? h?.journal?.boundFrom;
    const to = h?.bounds?.to ?? h?.journal?.boundTo;
    if (from && to) bounds.set(partition, { from, to });
  }
  return bounds;
}

export default job;

/** What a drop-expired-partitions run returns (its result in the run history and the API). */
export type DropExpiredPartitionsResult = JobResult<typeof job>;
