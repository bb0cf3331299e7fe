// prune-backups: retention for dumps, base backups and the WAL archive, under the
// policy in the config file (backups.dumps, backups.base). Rules, in this order:
// the newest keepLast always stay; anything younger than maxAgeDays stays; of base
// backups, the newest one older than maxAgeDays also stays, since restoring to the
// start of the window needs a backup taken before it (so the recovery window never
// shrinks below maxAgeDays); a base backup a running drill holds (its shared
// advisory lock) stays. WAL older than the oldest *retained* base backup's start
// segment goes; with no base backup no WAL goes. dryRun plans and changes nothing.
// A backup stops counting before its files go (manifest first, or a rename).
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import {
  baseBackupLockKey,
  dumpDir,
  listBaseBackups,
  listDumps,
  readArchive,
  readBackupCatalog,
  recoveryWindow,
  type ListedBaseBackup,
  type ListedDump,
} from '../src/backup/catalog.ts';
import { fsyncPath, treeSize } from '../src/core/files.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { backupDirOf } from '../src/core/config.ts';
import { pathInside } from '../src/core/paths.ts';
import { checkObject, refusalLine } from '../src/backup/manifest-checks.ts';
import { objectStoreFor } from '../src/backup/object-store.ts';
import { Pgbackrest } from '../src/backup/pgbackrest.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';
import { parseSegmentName } from '../src/backup/wal.ts';
import { DEFAULT_WAL_SEGMENT_BYTES } from '../src/core/constants.ts';

export const payload = z.object({
  target: targetField,
  /** List what would go; delete nothing. */
  dryRun: z.boolean().default(false),
});

const DAY_MS = 86_400_000;

interface Decision<T> {
  item: T;
  keep: boolean;
  reason: string;
}

/** The keep/remove decision for a list sorted newest first. */
export function planRetention<T>(
  items: T[],
  time: (t: T) => number,
  policy: { keepLast: number; maxAgeDays: number },
  now: number,
  anchorWindow: boolean,
): Decision<T>[] {
  const cutoff = now - policy.maxAgeDays * DAY_MS;
  // The window is anchored once a kept item is older than its start.
  let anchored = false;
  return items.map((item, i) => {
    if (i < policy.keepLast) {
      if (time(item) < cutoff) anchored = true;
      return { item, keep: true, reason: `among the newest ${policy.keepLast}` };
    }
    if (time(item) >= cutoff) return { item, keep: true, reason: `younger than ${policy.maxAgeDays} days` };
    if (anchorWindow && !anchored) {
      anchored = true;
      return {
        item,
        keep: true,
        reason: `newest before the ${policy.maxAgeDays}-day window: needed to restore to its start`,
      };
    }
    return {
      item,
      keep: false,
      reason: `older than ${policy.maxAgeDays} days and beyond the newest ${policy.keepLast}`,
    };
  });
}

const job = defineJob({
  name: 'prune-backups',
  description:
    'Retention for dumps, base backups and WAL: keeps the newest N, the max-age window, and the WAL retained base ' +
    'backups need.',
  payload,
  defaults: { attempts: 3, backoffMs: 60_000, timeoutMs: 3_600_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'dumps and base backups are removed there' },
    walArchive: { why: 'WAL older than the retained base backups is removed from it' },
    pgbackrest: { why: 'pgbackrest expire, for the pgbackrest engine' },
    objectStore: { why: "dumps' objects are removed from the bucket" },
  },
  deduplicate: true,
  async handler(ctx, { target, dryRun }) {
    if (ctx.target.backup.engine === 'pgbackrest') return prunePgbackrest(ctx, target, dryRun);
    const policy = ctx.config.backups;
    const now = Date.now();
    const store = objectStoreFor(ctx.config);
    const dumpListing = await listDumps(backupDirOf(ctx.config), target, store).finally(() => store?.close());
    const { dumps } = dumpListing;
    const { bases, refused: refusedBases } = await listBaseBackups(backupDirOf(ctx.config), target);
    const refused = [...dumpListing.refused, ...refusedBases];
    for (const r of refused) await ctx.log(refusalLine(r));
    const dumpPlan = planRetention(dumps, (d) => Date.parse(d.manifest.finishedAt), policy.dumps, now, false);
    const basePlan = planRetention(bases, (b) => Date.parse(b.manifest.stoppedAt), policy.base, now, true);

    // Locks are held on this session until the end of the run, so no drill starts on
    // a backup that is being removed.
    const lock = await ctx.pool.connect();
    const skipped: { label: string; reason: string }[] = [];
    try {
      for (const d of basePlan.filter((d) => !d.keep)) {
        const { rows } = await lock.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1)) as ok', [
          baseBackupLockKey(target, d.item.manifest.label),
        ]);
        if (!rows[0]!.ok) {
          d.keep = true;
          d.reason = 'in use by a running PITR drill';
          skipped.push({ label: d.item.manifest.label, reason: d.reason });
        }
      }
      const retainedBases = basePlan.filter((d) => d.keep).map((d) => d.item);
      const walPlan = await planWal(ctx.target.walArchiveDir, retainedBases);

      const plan = {
        dumps: dumpPlan.map((d) => ({
          file: d.item.manifest.file,
          finishedAt: d.item.manifest.finishedAt,
          action: d.keep ? 'keep' : 'remove',
          reason: d.reason,
        })),
        baseBackups: basePlan.map((d) => ({
          label: d.item.manifest.label,
          stoppedAt: d.item.manifest.stoppedAt,
          action: d.keep ? 'keep' : 'remove',
          reason: d.reason,
        })),
        wal: {
          keepFrom: walPlan.keepFrom,
          remove: walPlan.remove.length,
          removeBytes: walPlan.bytes,
          note: walPlan.note,
        },
        /** Manifests read but not trusted: neither kept nor removed, only named. */
        refused,
      };
      for (const d of [...plan.dumps, ...plan.baseBackups])
        await ctx.log(`${d.action} ${'file' in d ? d.file : d.label}: ${d.reason}`);
      await ctx.log(`WAL: ${walPlan.note}`);
      if (dryRun) return { dryRun: true, plan, walFiles: walPlan.remove.slice(0, 1000) };

      let freed = 0;
      for (const d of dumpPlan.filter((d) => !d.keep)) freed += await removeDump(ctx, target, d.item);
      for (const d of basePlan.filter((d) => !d.keep)) freed += await removeBaseBackup(d.item);
      for (const f of walPlan.remove) {
        const st = await fs.stat(f).catch(() => undefined);
        await fs.rm(f, { force: true });
        freed += st?.size ?? 0;
      }
      await ctx.progress(
        100,
        `removed ${plan.dumps.filter((d) => d.action === 'remove').length} dumps, ` +
          `${plan.baseBackups.filter((d) => d.action === 'remove').length} base backups, ${walPlan.remove.length} ` +
          `WAL files; ${Math.round(freed / 1048576)} MB freed`,
      );
      const archive = await readArchive(
        ctx.target.walArchiveDir,
        bases[0]?.manifest.walSegmentSize ?? DEFAULT_WAL_SEGMENT_BYTES,
      );
      return {
        dryRun: false,
        plan,
        bytesFreed: freed,
        skipped,
        recoveryWindow: recoveryWindow(retainedBases, archive),
      };
    } finally {
      await lock.query('select pg_advisory_unlock_all()').catch(() => undefined);
      lock.release();
    }
  },
});

/** WAL files older than the oldest retained base backup's first segment. */
async function planWal(
  archiveDir: string | undefined,
  retained: ListedBaseBackup[],
): Promise<{ keepFrom: string | null; remove: string[]; bytes: number; note: string }> {
  if (!archiveDir) return { keepFrom: null, remove: [], bytes: 0, note: 'no WAL archive configured for this target' };
  const oldest = retained.at(-1);
  if (!oldest) return { keepFrom: null, remove: [], bytes: 0, note: 'no base backup retained: every WAL file is kept' };
  const m = oldest.manifest;
  const keepFrom = parseSegmentName(m.startWal, m.walSegmentSize)!.segno;
  const archive = await readArchive(archiveDir, m.walSegmentSize);
  const remove: string[] = [];
  let bytes = 0;
  for (const f of archive?.files ?? []) {
    const seg = f.segment && parseSegmentName(f.segment, m.walSegmentSize);
    if (!seg || seg.segno >= keepFrom) continue; // history files and unknown names are never touched
    const full = path.join(archiveDir, f.name);
    remove.push(full);
    bytes += (await fs.stat(full).catch(() => undefined))?.size ?? 0;
  }
  return {
    keepFrom: m.startWal,
    remove,
    bytes,
    note: `keeping WAL from ${m.startWal} (start of base backup ${m.label}); ${remove.length} older files to remove`,
  };
}

/**
 * Removes a listed dump (its manifest passed manifest-checks.ts): the bucket's manifest,
 * object and verdict by the keys its own name gives, then the local files, each proven
 * to lie inside the target's dump directory first.
 */
async function removeDump(ctx: JobContext, target: string, d: ListedDump): Promise<number> {
  const dir = dumpDir(backupDirOf(ctx.config), target);
  const file = await pathInside(dir, d.manifest.file, `dump ${d.manifest.file}`);
  const o = d.manifest.object;
  if (o) {
    // In the bucket too: the manifest first (then the dump no longer counts), then the object.
    const store = objectStoreFor(ctx.config);
    if (store) {
      try {
        const refusedObject = checkObject(o, store, 'dumps', target, d.manifest.file);
        if (refusedObject)
          throw new PermanentJobError(`dump ${d.manifest.file}: ${refusedObject}`, 'UNTRUSTED_MANIFEST');
        const manifestKey = store.manifestKey('dumps', target, d.manifest.file);
        await store.remove(manifestKey);
        await store.remove(o.key);
        await store.remove(manifestKey.replace(/\.manifest\.json$/, '.restore-check.json'));
      } finally {
        store.close();
      }
    }
  }
  const manifest = await pathInside(dir, `${file}.manifest.json`, `dump ${d.manifest.file}`);
  const verdict = await pathInside(dir, `${file}.restore-check.json`, `dump ${d.manifest.file}`);
  const size = (await treeSize(file).catch(() => 0)) || (o?.bytes ?? 0);
  // Without its manifest the dump no longer counts; then its files go.
  await fs.rm(manifest, { force: true });
  await fsyncPath(dir).catch(() => undefined);
  await fs.rm(file, { recursive: true, force: true });
  await fs.rm(verdict, { force: true });
  return size;
}

async function removeBaseBackup(b: ListedBaseBackup): Promise<number> {
  const size = await treeSize(b.path);
  const doomed = path.join(path.dirname(b.path), `.${path.basename(b.path)}.removing`);
  await fs.rename(b.path, doomed);
  await fsyncPath(path.dirname(b.path));
  await fs.rm(doomed, { recursive: true, force: true });
  return size;
}

/**
 * The pgbackrest engine: the same rules over full-backup chains (a full set and the
 * diff and incr sets that depend on it), each expired whole with
 * `pgbackrest expire --set`, which also expires the WAL only those sets needed.
 * Logical dumps follow backups.dumps as with the native engine.
 */
async function prunePgbackrest(ctx: JobContext, target: string, dryRun: boolean) {
  const br = new Pgbackrest(ctx.target);
  const policy = ctx.config.backups;
  const now = Date.now();
  const info = await br.info(ctx.signal);
  const { sets } = info;
  const chains = sets
    .filter((s) => s.type === 'full')
    .map((full) => ({
      full,
      members: sets.filter((s) => s.label === full.label || s.label.startsWith(`${full.label}_`)),
    }));
  const newestStop = (c: (typeof chains)[number]) => Math.max(...c.members.map((m) => Date.parse(m.stoppedAt)));
  const chainPlan = planRetention(chains, newestStop, policy.base, now, true);
  const store = objectStoreFor(ctx.config);
  const dumpListing = await listDumps(backupDirOf(ctx.config), target, store).finally(() => store?.close());
  const { dumps } = dumpListing;
  const dumpPlan = planRetention(dumps, (d) => Date.parse(d.manifest.finishedAt), policy.dumps, now, false);
  const refused = [...dumpListing.refused, ...info.refused];
  for (const r of refused) await ctx.log(refusalLine(r));
  // A refused set may belong to any chain: with one, no chain is expired.
  if (info.refused.length) {
    for (const d of chainPlan.filter((d) => !d.keep)) {
      d.keep = true;
      d.reason = `pgbackrest info lists ${info.refused.length} set(s) that fail their checks; nothing is expired`;
    }
  }
  const lock = await ctx.pool.connect();
  try {
    // A set a running drill restores from holds its shared lock: its chain stays.
    for (const d of chainPlan.filter((d) => !d.keep)) {
      for (const m of d.item.members) {
        const { rows } = await lock.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1)) as ok', [
          baseBackupLockKey(target, m.label),
        ]);
        if (!rows[0]!.ok) {
          d.keep = true;
          d.reason = `in use by a running PITR drill (set ${m.label})`;
        }
      }
    }
    const plan = {
      engine: 'pgbackrest' as const,
      stanza: br.stanza,
      dumps: dumpPlan.map((d) => ({
        file: d.item.manifest.file,
        action: d.keep ? 'keep' : 'remove',
        reason: d.reason,
      })),
      backupSets: chainPlan.map((d) => ({
        label: d.item.full.label,
        sets: d.item.members.map((m) => m.label),
        stoppedAt: new Date(newestStop(d.item)).toISOString(),
        action: d.keep ? 'keep' : 'expire',
        reason: d.reason,
      })),
      refused,
    };
    for (const d of [...plan.dumps, ...plan.backupSets]) {
      await ctx.log(`${d.action} ${'file' in d ? d.file : d.label}: ${d.reason}`);
    }
    const expiring = chainPlan.filter((d) => !d.keep);
    const output: string[] = [];
    for (const d of expiring) {
      const args = [
        'expire',
        `--set=${d.item.full.label}`,
        '--log-level-console=info',
        ...(dryRun ? ['--dry-run'] : []),
      ];
      const { stdout } = await br.run(args, { signal: ctx.signal });
      output.push(...stdout.split('\n').filter((l) => /expire|remove/.test(l) && !/command (begin|end)/.test(l)));
    }
    if (dryRun) return { dryRun: true, plan, pgbackrest: output };
    let freed = 0;
    for (const d of dumpPlan.filter((d) => !d.keep)) freed += await removeDump(ctx, target, d.item);
    const window = (await readBackupCatalog(backupDirOf(ctx.config), ctx.target)).recoveryWindow;
    await ctx.progress(
      100,
      `expired ${expiring.length} backup chains, ` +
        `removed ${plan.dumps.filter((d) => d.action === 'remove').length} dumps`,
    );
    return { dryRun: false, plan, pgbackrest: output, dumpBytesFreed: freed, recoveryWindow: window };
  } finally {
    await lock.query('select pg_advisory_unlock_all()').catch(() => undefined);
    lock.release();
  }
}

export default job;

/** What a prune-backups run returns (its result in the run history and the API). */
export type PruneBackupsResult = JobResult<typeof job>;
