// restore-cluster: brings a target's whole cluster back from its physical backups, with
// either engine (native: a base backup and the WAL archive; pgBackRest: restore --set
// --type --target --pg1-path), into a NEW data directory, to a time T, to a named
// restore point, or to the end of the archive. The server replays there on localhost:
// with a port it is left running (promoted, or paused at the target), without one it is
// stopped cleanly once the proof is read, ready to start. The proof: where recovery
// stopped (the server's own log line), the WAL replayed, row counts of named tables.
// pitr-drill runs the same restore (src/backup/cluster-restore.ts) into a scratch
// directory every week. Never the live data directory, never a directory that is not
// empty; a killed run leaves a staging directory or a marked one, which its retry clears.
import path from 'node:path';
import type pg from 'pg';
import { z } from 'zod';
import { checkIntoAgainstConfig, archiveCommandOf } from '../src/backup/cluster-restore-checks.ts';
import { nextStepsFor, restoreCluster } from '../src/backup/cluster-restore.ts';
import type { RestoreTarget } from '../src/backup/engine.ts';
import { engineFor } from '../src/backup/engines/index.ts';
import { baseBackupLabel, pgbackrestSetLabel } from '../src/backup/names.ts';
import type { Config } from '../src/core/config.ts';
import type { FieldIssue } from '../src/core/errors.ts';
import { qualifiedName } from '../src/core/sql.ts';
import { defineJob, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z
  .object({
    target: targetField,
    /** The NEW data directory: absent, or an empty directory. */
    into: z
      .string()
      .min(1)
      .refine((p) => path.isAbsolute(p), 'must be an absolute path'),
    /** Recover to this time (ISO, with its offset). */
    time: z.iso.datetime({ offset: true, error: 'must be an ISO time with its offset' }).optional(),
    /** Recover to this named restore point (pg_create_restore_point). */
    restorePoint: z
      .string()
      .min(1)
      .max(63)
      .regex(/^[^'\\\r\n]+$/, 'must not hold a quote, a backslash or a line break')
      .optional(),
    /** The base backup label or pgBackRest set; default the newest verified one that ended before the target. */
    set: z
      .union([baseBackupLabel, pgbackrestSetLabel], {
        error:
          'must be a base backup label such as main-20261125T010000000Z, or a pgBackRest set such as ' +
          '20261125-010000F',
      })
      .optional(),
    /** Start the restored server on localhost:port and leave it running. */
    port: z.number().int().min(1024).max(65_535).optional(),
    /** With port: promote once recovery reached the target (default: paused there). */
    promote: z.boolean().default(false),
    /** Tables (schema.table) counted in the restored cluster: the proof. */
    tables: z.array(qualifiedName).max(100).default([]),
    recoveryTimeoutSeconds: z.number().int().min(10).max(86_400).default(1800),
  })
  .strict();

type Payload = z.output<typeof payload>;

function checkRequest(p: Payload, config: Config): FieldIssue[] {
  const issues = checkIntoAgainstConfig(p.into, config);
  if (p.time && p.restorePoint)
    issues.push({ path: 'restorePoint', message: 'give time or restorePoint, not both (neither: the latest)' });
  return issues;
}

/** The time as given: its microseconds count (a commit a microsecond before T is restored). */
const targetOf = (p: Payload): RestoreTarget =>
  p.time ? { time: p.time } : p.restorePoint ? { restorePoint: p.restorePoint } : 'latest';

const job = defineJob({
  name: 'restore-cluster',
  description:
    'Restores the cluster (either backup engine) into a new data directory to a time, a restore point or the ' +
    'latest; proves where recovery stopped; can leave it running on a port, promoted or paused.',
  payload,
  defaults: { attempts: 2, backoffMs: 30_000, timeoutMs: 12 * 3_600_000, concurrency: 1 },
  needs: {
    backupDir: { why: 'the base backups it restores are read there' },
    walArchive: { why: "the restored server's restore_command copies WAL from it" },
    pgBinaries: { tools: ['pg_ctl', 'postgres', 'pg_verifybackup'], why: 'the restored server runs here' },
    engineTools: { why: 'its backup engine restores the set (pgbackrest restore)' },
  },
  deduplicate: true,
  checkConfig: checkRequest,
  async handler(ctx, p) {
    const engine = engineFor(ctx.target);
    engine.checkRestorable();
    const target = targetOf(p);
    // The target may be the host that is lost: then nothing is held and the proof connects as its URL says.
    const who = await ctx.pool
      .query<{ usr: string; db: string }>('select current_user as usr, current_database() as db')
      .then(
        (r) => r.rows[0]!,
        () => undefined,
      );
    const url = new URL(ctx.target.url);
    const request = (lock?: pg.ClientBase) =>
      restoreCluster(ctx, engine, {
        into: p.into,
        target,
        set: p.set,
        port: p.port,
        promote: p.promote,
        tables: p.tables,
        recoveryTimeoutSeconds: p.recoveryTimeoutSeconds,
        user: who?.usr ?? decodeURIComponent(url.username || 'postgres'),
        database: who?.db ?? decodeURIComponent(url.pathname.slice(1) || 'postgres'),
        lock,
        clusterName: `pgmaint-restored-${ctx.target.name}`,
      });
    if (!who) await ctx.log(`target "${ctx.target.name}" does not answer: restoring without holding the set`);
    // The chosen set is held (shared) against prune-backups until the restore is done.
    const restored = who
      ? await ctx.withClient(request, { reset: 'select pg_advisory_unlock_all()' })
      : await request();
    const database = who?.db ?? decodeURIComponent(url.pathname.slice(1) || 'postgres');
    const nextSteps = nextStepsFor(restored, archiveCommandOf(ctx.target), database);
    await ctx.progress(
      100,
      `restored ${restored.set.label} into ${restored.dataDir}: ${restored.proof.state}` +
        (restored.running ? `, running on localhost:${restored.port}` : ', stopped, ready to start'),
    );
    return {
      set: restored.set.label,
      setStoppedAt: restored.set.stoppedAt,
      target: target === 'latest' ? 'latest' : target,
      dataDir: restored.dataDir,
      port: restored.port,
      running: restored.running,
      promoted: restored.promoted,
      proof: restored.proof,
      restoreSeconds: restored.restoreSeconds,
      verifySeconds: restored.verifySeconds,
      replaySeconds: restored.replaySeconds,
      totalSeconds: restored.totalSeconds,
      nextSteps,
    };
  },
});

export default job;

/** What a restore-cluster run returns (its result in the run history and the API). */
export type RestoreClusterResult = JobResult<typeof job>;
