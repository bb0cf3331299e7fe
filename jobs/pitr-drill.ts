// pitr-drill: proof that point-in-time recovery works, measured. On the live
// target it writes marker M1, notes the target time T (with row counts of the
// configured tables in a snapshot taken at T), writes M2 after T and forces a WAL
// switch. It then runs restore-cluster's restore (src/backup/cluster-restore.ts, the
// operator's code path: the newest verified base backup or set that stopped before T)
// into a scratch directory, replays the archive up to T and promotes. The drill
// passes when M1 is there, M2 is not, the server log says recovery stopped at the
// target, and the row counts match. The scratch directory is stopped and deleted
// whatever happens; the live data directory and the archive are only ever read.
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from '../src/core/errors.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { qualifiedName, quoteIdent, withTransaction } from '../src/core/sql.ts';
import { type ClusterRestoreOutcome, restoreCluster } from '../src/backup/cluster-restore.ts';
import type { BackupEngine } from '../src/backup/engine.ts';
import { engineFor } from '../src/backup/engines/index.ts';
import { baseBackupLabel, pgbackrestSetLabel } from '../src/backup/names.ts';
import { createScratchInstance, removeAbandonedScratch, type ScratchInstance } from '../src/backup/scratch-instance.ts';

export const payload = z.object({
  target: targetField,
  /** Label of the base backup to restore; default: the newest verified one that stopped before T. */
  baseBackup: z
    .union([baseBackupLabel, pgbackrestSetLabel], {
      error:
        'must be a base backup label such as main-20261125T010000000Z, or a pgBackRest set such as 20261125-010000F',
    })
    .optional(),
  /** Tables (schema.table) whose rows are counted at T and after the restore; default backups.drillTables. */
  tables: z.array(qualifiedName).max(100).optional(),
  /** How long the WAL written after T may take to reach the archive. */
  archiveWaitSeconds: z.number().int().min(1).max(3600).default(120),
  /** How long restore and replay may take before the drill fails (docs/dairy-erp.md: RTO under 30 minutes). */
  recoveryTimeoutSeconds: z.number().int().min(10).max(86_400).default(1800),
});

type Payload = z.output<typeof payload>;

/** What the drill wrote on the live target at T. */
interface TargetPoint {
  drillId: string;
  targetTime: string;
  rowCounts: Record<string, number>;
  rpoSeconds: number | null;
  systemIdentifier: string;
  database: string;
  user: string;
}

export interface DrillCheck {
  name: string;
  ok: boolean;
  detail: string;
}

const job = defineJob({
  name: 'pitr-drill',
  description:
    'Restores a base backup plus archived WAL to a target time in a scratch instance, proves markers and row ' +
    'counts, reports RTO/RPO, tears down.',
  payload,
  defaults: { attempts: 1, backoffMs: 300_000, timeoutMs: 3 * 3_600_000, concurrency: 1, heavy: true },
  needs: {
    backupDir: { why: 'the base backup it restores is read there' },
    walArchive: { why: "the scratch instance's restore_command copies WAL from it" },
    pgBinaries: { tools: ['pg_ctl', 'postgres', 'pg_verifybackup'], why: 'the scratch instance runs here' },
    engineTools: { why: 'its backup engine restores the set (pgbackrest restore)' },
  },
  deduplicate: true,
  async handler(ctx, p) {
    const engine = engineFor(ctx.target);
    // Before anything is written on the live target: a target that cannot be restored fails here.
    engine.checkRestorable();
    return drill(ctx, p, engine);
  },
});

async function drill(ctx: JobContext, p: Payload, engine: BackupEngine) {
  const tables = p.tables ?? ctx.config.backups.drillTables;
  const scratchRoot = ctx.config.backups.scratchDir ?? os.tmpdir();
  await removeAbandonedScratch(scratchRoot, (d) => ctx.log(`removed ${d} left by a drill whose worker died`));

  await ctx.progress(2, 'writing markers on the live target');
  const point = await markTargetTime(ctx, tables);
  await ctx.log(
    `target time T = ${point.targetTime} (M1 written before, M2 after); rows at T: ` +
      `${JSON.stringify(point.rowCounts)}`,
  );
  const segment = await switchWal(ctx.pool);
  await ctx.progress(8, `waiting for WAL segment ${segment} in the archive`);
  await engine.waitForArchived(ctx, segment, p.archiveWaitSeconds * 1000).catch((err) => {
    throw new Error(
      `the WAL written after T (segment ${segment}) was not archived within ${p.archiveWaitSeconds} s: ` +
        `${(err as Error).message}`,
    );
  });

  // The backup stays locked (shared) against prune-backups for the whole drill.
  return ctx.withClient(
    async (lock) => {
      let scratch: ScratchInstance | undefined;
      try {
        scratch = await createScratchInstance(scratchRoot);
        let markers: string[] = [];
        // The operator's restore (restore-cluster), into the scratch directory, promoted at T.
        const restored = await restoreCluster(ctx, engine, {
          into: scratch.dataDir,
          target: { time: point.targetTime },
          set: p.baseBackup,
          promote: true,
          tables: Object.keys(point.rowCounts),
          recoveryTimeoutSeconds: p.recoveryTimeoutSeconds,
          user: point.user,
          database: point.database,
          lock,
          systemIdentifier: point.systemIdentifier,
          clusterName: 'pgmaint-drill',
          settings: { shared_buffers: '128MB' },
          async inspect(client) {
            const { rows } = await client.query<{ marker: string }>(
              `select marker from pgmaint.drill_marker where drill_id = $1 order by marker`,
              [point.drillId],
            );
            markers = rows.map((r) => r.marker);
          },
        }).catch((err: unknown) => {
          if ((err as { code?: string }).code === 'RECOVERY_FAILED')
            throw new PermanentJobError(`PITR drill failed: ${(err as Error).message}`, 'DRILL_FAILED');
          throw err;
        });
        return await prove(ctx, point, restored, markers);
      } finally {
        if (scratch) {
          await scratch.destroy();
          await ctx.log(`scratch instance stopped and ${scratch.dir} deleted`).catch(() => undefined);
        }
      }
    },
    { reset: 'select pg_advisory_unlock_all()' },
  );
}

async function markTargetTime(ctx: JobContext, tables: string[]): Promise<TargetPoint> {
  // Unique per run: a run taken over after its worker died repeats jobId and attempt.
  const drillId = `${ctx.jobId}:${ctx.attempt}:${randomUUID().slice(0, 8)}`;
  await ctx.pool.query(`create schema if not exists pgmaint;
    create table if not exists pgmaint.drill_marker (drill_id text not null, marker text not null,
      written_at timestamptz not null default clock_timestamp(), primary key (drill_id, marker));
    delete from pgmaint.drill_marker where written_at < now() - interval '90 days'`);
  await ctx.pool.query(`insert into pgmaint.drill_marker (drill_id, marker) values ($1, 'M1')`, [drillId]);
  // T is read after the snapshot is taken: everything the counts see committed before T.
  const point = await withTransaction(
    ctx.pool,
    async (client): Promise<TargetPoint> => {
      const { rows } = await client.query<{
        t: string;
        last_archived: Date | null;
        sysid: string;
        db: string;
        usr: string;
      }>(
        `select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t,
                (select last_archived_time from pg_stat_archiver) as last_archived,
                (select system_identifier::text from pg_control_system()) as sysid,
                current_database() as db, current_user as usr`,
      );
      const r = rows[0]!;
      const rowCounts: Record<string, number> = {};
      for (const t of tables) rowCounts[t] = await countRows(client, t);
      return {
        drillId,
        targetTime: r.t,
        rowCounts,
        // Worst-case loss had the primary vanished at T: what was written since the last archived segment.
        rpoSeconds: r.last_archived
          ? Math.max(0, Math.round((Date.parse(r.t) - r.last_archived.getTime()) / 100) / 10)
          : null,
        systemIdentifier: r.sysid,
        database: r.db,
        user: r.usr,
      };
    },
    'begin isolation level repeatable read read only',
  );
  await sleep(20);
  await ctx.pool.query(`insert into pgmaint.drill_marker (drill_id, marker) values ($1, 'M2')`, [drillId]);
  return point;
}

async function countRows(client: pg.ClientBase, table: string): Promise<number> {
  const [schema, name] = table.split('.') as [string, string];
  const { rows } = await client.query<{ n: string }>(
    `select count(*) as n from ${quoteIdent(schema)}.${quoteIdent(name)}`,
  );
  return Number(rows[0]!.n);
}

/** Closes the current segment (it holds M2) and returns its name. */
async function switchWal(pool: pg.Pool): Promise<string> {
  const { rows } = await pool.query<{ seg: string }>(`select pg_walfile_name(pg_switch_wal()) as seg`);
  return rows[0]!.seg;
}

async function prove(ctx: JobContext, point: TargetPoint, restored: ClusterRestoreOutcome, markers: string[]) {
  const { proof } = restored;
  const found = `markers found: ${markers.join(', ') || 'none'}`;
  const checks: DrillCheck[] = [
    { name: 'M1 (written before T) present', ok: markers.includes('M1'), detail: found },
    { name: 'M2 (written after T) absent', ok: !markers.includes('M2'), detail: found },
  ];
  for (const [table, expected] of Object.entries(point.rowCounts)) {
    const n = proof.rowCounts[table];
    checks.push({ name: `rows of ${table} at T`, ok: n === expected, detail: `live at T ${expected}, restored ${n}` });
  }
  const stop = proof.stopLine && /recovery stopping (before|after) (commit|abort) of transaction/.exec(proof.stopLine);
  const stopTime = proof.stoppedAt ? Date.parse(proof.stoppedAt) : NaN;
  checks.push({
    name: 'recovery stopped at the target time',
    ok:
      Boolean(stop) &&
      (stop![1] === 'before' ? stopTime > Date.parse(point.targetTime) : stopTime <= Date.parse(point.targetTime)),
    detail: proof.stopLine ?? 'no "recovery stopping" line in the server log',
  });
  const result = {
    baseBackup: restored.set.label,
    baseBackupStoppedAt: restored.set.stoppedAt,
    targetTime: point.targetTime,
    rtoSeconds: restored.totalSeconds,
    restoreSeconds: restored.restoreSeconds,
    verifySeconds: restored.verifySeconds,
    replaySeconds: restored.replaySeconds,
    rpoSeconds: point.rpoSeconds,
    walSegmentsReplayed: proof.walReplayed.segments,
    walReplayed: proof.walReplayed,
    checks,
  };
  const failed = checks.filter((c) => !c.ok);
  if (failed.length) {
    await ctx.log(`drill FAILED: ${JSON.stringify(result)}`);
    throw new PermanentJobError(
      `PITR drill failed: ${failed.map((c) => `${c.name}: ${c.detail}`).join('; ')}`,
      'DRILL_FAILED',
    );
  }
  await ctx.progress(
    95,
    `drill passed: RTO ${result.rtoSeconds.toFixed(1)} s, RPO ${point.rpoSeconds ?? '?'} s, ` +
      `${result.walSegmentsReplayed} WAL segments replayed`,
  );
  return result;
}

export default job;

/** What a pitr-drill run returns (its result in the run history and the API). */
export type PitrDrillResult = JobResult<typeof job>;
