// pitr-drill: proof that point-in-time recovery works, measured. On the live
// target it writes marker M1, notes the target time T (with row counts of the
// configured tables in a snapshot taken at T), writes M2 after T and forces a WAL
// switch. It then restores to T with the target's backup engine (engine.restore, the
// one restore path: the newest verified base backup or set that stopped before T,
// into a scratch instance), replays the archive up to T and promotes. The drill
// passes when M1 is there, M2 is not, the server log says recovery stopped at the
// target, and the row counts match. The scratch instance is stopped and deleted
// whatever happens; the live data directory and the archive are only ever read.
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { z } from 'zod';
import { PermanentJobError } from '../src/core/errors.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { qualifiedName, quoteIdent, withTransaction } from '../src/core/sql.ts';
import type { BackupEngine, RestoreOutcome } from '../src/backup/engine.ts';
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
        const restoreStarted = Date.now();
        const restored = await engine.restore(
          ctx,
          scratch.dataDir,
          { time: point.targetTime },
          {
            set: p.baseBackup,
            targetAction: 'promote',
            owner: scratch.owner,
            lock,
            systemIdentifier: point.systemIdentifier,
          },
        );
        return await replayAndProve(ctx, p, scratch, restored, restoreStarted, point);
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

async function replayAndProve(
  ctx: JobContext,
  p: Payload,
  scratch: ScratchInstance,
  restored: RestoreOutcome,
  restoreStarted: number,
  point: TargetPoint,
) {
  const backup = restored.set;
  const verifySeconds = restored.verifySeconds;
  // Isolation: the recovery settings are the restore's; these keep the scratch server off the live paths.
  await scratch.configure({
    port: scratch.port,
    listen_addresses: '',
    unix_socket_directories: scratch.socketDir,
    archive_mode: 'off',
    archive_command: '',
    archive_cleanup_command: '',
    recovery_end_command: '',
    hot_standby: 'off',
    shared_buffers: '128MB',
    logging_collector: 'off',
    log_destination: 'stderr',
    cluster_name: 'pgmaint-drill',
  });
  const replayStarted = Date.now();
  const restoreSeconds = (replayStarted - restoreStarted) / 1000;
  await ctx.progress(30, `replaying WAL from the archive to ${point.targetTime}`);
  try {
    await scratch.start(ctx.signal, restored.startOptions);
  } catch (err) {
    // Recovery can fail before pg_ctl sees the server up; the log has the verdict.
    await throwIfRecoveryFailed(scratch, point);
    throw err;
  }
  await waitForPromotion(ctx, scratch, point, p.recoveryTimeoutSeconds);
  const promoted = Date.now();
  const rtoSeconds = (promoted - restoreStarted) / 1000;
  await ctx.progress(85, `promoted after ${rtoSeconds.toFixed(1)} s; checking the restored data`);

  const log = await scratch.log();
  const checks: DrillCheck[] = [];
  const client = scratch.client(point.user, point.database);
  await client.connect();
  try {
    const { rows } = await client.query<{ marker: string }>(
      `select marker from pgmaint.drill_marker where drill_id = $1 order by marker`,
      [point.drillId],
    );
    const markers = rows.map((r) => r.marker);
    checks.push({
      name: 'M1 (written before T) present',
      ok: markers.includes('M1'),
      detail: `markers found: ${markers.join(', ') || 'none'}`,
    });
    checks.push({
      name: 'M2 (written after T) absent',
      ok: !markers.includes('M2'),
      detail: `markers found: ${markers.join(', ') || 'none'}`,
    });
    for (const [table, expected] of Object.entries(point.rowCounts)) {
      const restored = await countRows(client, table);
      checks.push({
        name: `rows of ${table} at T`,
        ok: restored === expected,
        detail: `live at T ${expected}, restored ${restored}`,
      });
    }
  } finally {
    await client.end().catch(() => undefined);
  }
  const stop = /recovery stopping (before|after) (commit|abort) of transaction \d+, time ([^\n]+)/.exec(log);
  const stopTime = stop
    ? Date.parse(
        stop[3]!
          .trim()
          .replace(' ', 'T')
          .replace(/([+-]\d\d)$/, '$1:00'),
      )
    : NaN;
  checks.push({
    name: 'recovery stopped at the target time',
    ok:
      Boolean(stop) &&
      (stop![1] === 'before' ? stopTime > Date.parse(point.targetTime) : stopTime <= Date.parse(point.targetTime)),
    detail: stop ? stop[0] : 'no "recovery stopping" line in the server log',
  });
  const walSegmentsReplayed = (log.match(/restored log file "[0-9A-F]{24}" from archive/g) ?? []).length;
  const result = {
    baseBackup: backup.label,
    baseBackupStoppedAt: backup.stoppedAt,
    targetTime: point.targetTime,
    rtoSeconds,
    restoreSeconds,
    verifySeconds,
    replaySeconds: (promoted - replayStarted) / 1000,
    rpoSeconds: point.rpoSeconds,
    walSegmentsReplayed,
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
    `drill passed: RTO ${rtoSeconds.toFixed(1)} s, RPO ${point.rpoSeconds ?? '?'} s, ${walSegmentsReplayed} WAL ` +
      `segments replayed`,
  );
  return result;
}

const logTail = async (scratch: ScratchInstance) => (await scratch.log()).trim().split('\n').slice(-8).join(' | ');

/** "Recovery ended before target" is a failed drill (the archive lacks WAL), never a success. */
async function throwIfRecoveryFailed(scratch: ScratchInstance, point: TargetPoint): Promise<void> {
  if (/recovery ended before configured recovery target was reached/.test(await scratch.log())) {
    throw new PermanentJobError(
      `PITR drill failed: recovery ended before reaching T (${point.targetTime}): the archive lacks WAL between the ` +
        `base backup and T. Server log: ${await logTail(scratch)}`,
      'DRILL_FAILED',
    );
  }
}

/** Waits until the scratch instance accepts queries out of recovery; fails on the log's verdict or a dead server. */
async function waitForPromotion(
  ctx: JobContext,
  scratch: ScratchInstance,
  point: TargetPoint,
  timeoutSeconds: number,
): Promise<void> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  // Every 100 ms, as an operator's script would: the wait is part of the RTO. Whether the
  // server still runs (a pg_ctl process) is asked once a second.
  for (let round = 1; ; round++) {
    ctx.signal.throwIfAborted();
    await throwIfRecoveryFailed(scratch, point);
    const client = scratch.client(point.user, point.database);
    try {
      await client.connect();
      const { rows } = await client.query<{ r: boolean }>('select pg_is_in_recovery() as r');
      if (!rows[0]!.r) return;
    } catch {
      // starting up or still replaying (hot_standby is off)
    } finally {
      await client.end().catch(() => undefined);
    }
    if (round % 10 === 0 && !(await scratch.running())) {
      // Stopped: its log is complete now, and may hold the verdict written as it went down.
      await throwIfRecoveryFailed(scratch, point);
      throw new Error(`the scratch instance stopped during recovery. Server log: ${await logTail(scratch)}`);
    }
    if (Date.now() > deadline)
      throw new Error(
        `restore and replay did not finish within ${timeoutSeconds} s. Server log: ${await logTail(scratch)}`,
      );
    await sleep(100);
  }
}

export default job;

/** What a pitr-drill run returns (its result in the run history and the API). */
export type PitrDrillResult = JobResult<typeof job>;
