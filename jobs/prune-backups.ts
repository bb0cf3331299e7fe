// prune-backups: retention for dumps, base backups and the WAL archive, under the
// policy in the config file (backups.dumps, backups.base). Rules, in this order:
// the newest keepLast always stay; anything younger than maxAgeDays stays; of base
// backups, the newest one older than maxAgeDays also stays, since restoring to the
// start of the window needs a backup taken before it (so the recovery window never
// shrinks below maxAgeDays); a base backup a running drill holds (its shared
// advisory lock) stays. Dumps are pruned here; base backups and WAL by the target's
// backup engine (native: BACKUP_DIR and the WAL older than the oldest retained base
// backup; pgbackrest: `pgbackrest expire --set` per full-backup chain). dryRun plans
// and changes nothing. A backup stops counting before its files go (manifest first,
// or a rename).
import fs from 'node:fs/promises';
import { z } from 'zod';
import { dumpDir, listDumps, type ListedDump } from '../src/backup/catalog.ts';
import { engineFor } from '../src/backup/engines/index.ts';
import { checkObject, refusalLine } from '../src/backup/manifest-checks.ts';
import { objectStoreFor } from '../src/backup/object-store.ts';
import { planRetention } from '../src/backup/retention.ts';
import { backupDirOf } from '../src/core/config.ts';
import { PermanentJobError } from '../src/core/errors.ts';
import { fsyncPath, treeSize } from '../src/core/files.ts';
import { pathInside } from '../src/core/paths.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** List what would go; delete nothing. */
  dryRun: z.boolean().default(false),
});

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
    engineTools: { why: 'its backup engine expires the sets (pgbackrest expire)' },
    objectStore: { why: "dumps' objects are removed from the bucket" },
  },
  deduplicate: true,
  async handler(ctx, { target, dryRun }) {
    const engine = engineFor(ctx.target);
    const policy = ctx.config.backups;
    const now = Date.now();
    const store = objectStoreFor(ctx.config);
    const dumpListing = await listDumps(backupDirOf(ctx.config), target, store).finally(() => store?.close());
    const dumpPlan = planRetention(
      dumpListing.dumps,
      (d) => Date.parse(d.manifest.finishedAt),
      policy.dumps,
      now,
      false,
    );
    // Locks are held on this session until the end of the run, so no drill starts on
    // a backup that is being removed.
    return ctx.withClient(
      async (lock) => {
        const expiry = await engine.planExpiry(ctx, { policy: policy.base, now, lock });
        /** Manifests and sets read but not trusted: neither kept nor removed, only named. */
        const refused = [...dumpListing.refused, ...expiry.refused];
        for (const r of refused) await ctx.log(refusalLine(r));
        const plan = {
          dumps: dumpPlan.map((d) => ({
            file: d.item.manifest.file,
            finishedAt: d.item.manifest.finishedAt,
            action: d.keep ? 'keep' : 'remove',
            reason: d.reason,
          })),
          ...expiry.view,
          refused,
        };
        for (const d of plan.dumps) await ctx.log(`${d.action} ${d.file}: ${d.reason}`);
        for (const d of expiry.decisions) await ctx.log(`${d.action} ${d.label}: ${d.reason}`);
        for (const n of expiry.notes) await ctx.log(n);
        if (dryRun) {
          const { details } = await engine.applyExpiry(ctx, expiry, { dryRun: true });
          return { dryRun: true, plan, ...details };
        }
        let dumpBytesFreed = 0;
        for (const d of dumpPlan.filter((d) => !d.keep)) dumpBytesFreed += await removeDump(ctx, target, d.item);
        const applied = await engine.applyExpiry(ctx, expiry, { dryRun: false });
        const bytesFreed = dumpBytesFreed + applied.bytesFreed;
        await ctx.progress(
          100,
          `removed ${plan.dumps.filter((d) => d.action === 'remove').length} dumps, ` +
            `${expiry.decisions.filter((d) => d.action !== 'keep').length} base backups or chains, ` +
            `${expiry.walFiles.length} WAL files; ${Math.round(bytesFreed / 1048576)} MB freed`,
        );
        return {
          dryRun: false,
          plan,
          ...applied.details,
          bytesFreed,
          dumpBytesFreed,
          skipped: expiry.skipped,
          recoveryWindow: (await engine.catalog(backupDirOf(ctx.config))).recoveryWindow,
        };
      },
      { reset: 'select pg_advisory_unlock_all()' },
    );
  },
});

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

export default job;

/** What a prune-backups run returns (its result in the run history and the API). */
export type PruneBackupsResult = JobResult<typeof job>;
