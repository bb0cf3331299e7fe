// The pgbackrest engine: pgBackRest owns the repository (posix, S3, GCS, Azure; its
// own encryption); pgmaint runs its backup, verify, check, info, restore and expire
// (src/backup/pgbackrest.ts) and applies its own rules on top: a set counts once
// verified, expiry keeps the recovery window and never a set a drill holds.
import type pg from 'pg';
import { type FieldIssue, PermanentJobError } from '../../core/errors.ts';
import { readyBacklog } from '../archiver.ts';
import { baseBackupLockKey, type RecoveryWindow } from '../catalog.ts';
import type {
  ArchiveStatus,
  BackupEngine,
  BaseBackupOptions,
  EngineCatalog,
  EngineRun,
  EngineTarget,
  ExpiryOutcome,
  ExpiryPlan,
  RestoreOptions,
  RestoreOutcome,
  RestoreTarget,
} from '../engine.ts';
import { refusalLine } from '../manifest-checks.ts';
import { Pgbackrest, type PgbackrestInfo, type PgbackrestSet } from '../pgbackrest.ts';
import { describeTarget, liveDataDirectory, pgTime, prepareRestoreDir, restoringLine } from '../restore-dir.ts';
import { HELD_BY_DRILL, planRetention, type RetentionPolicy } from '../retention.ts';
import { parseSegmentName, parseSize } from '../wal.ts';

const NO_WINDOW: RecoveryWindow = { earliest: null, latest: null, seconds: 0, fromBaseBackup: null, brokenChains: [] };

export class PgbackrestEngine implements BackupEngine {
  readonly name = 'pgbackrest' as const;
  private readonly br: Pgbackrest;

  constructor(private readonly target: EngineTarget) {
    this.br = new Pgbackrest(target);
  }

  checkBaseBackup(o: Partial<BaseBackupOptions>): FieldIssue[] {
    return (['compression', 'compressionLevel', 'maxRate'] as const)
      .filter((k) => o[k] !== undefined)
      .map((k) => ({
        path: k,
        message: `is set in pgbackrest.conf for the pgbackrest engine (target ${this.target.name})`,
      }));
  }

  /** `pgbackrest backup`, then `pgbackrest verify`, and the set as `info` records it. */
  async baseBackup(run: EngineRun, o: BaseBackupOptions) {
    const { br } = this;
    const type = o.type ?? 'incr';
    const before = new Set((await br.info(run.signal)).sets.map((s) => s.label));
    await run.progress(5, `pgbackrest backup --type=${type} (stanza ${br.stanza})`);
    await br.run(['backup', `--type=${type}`], { signal: run.signal, onStderrLine: (l) => void run.log(l) });
    const set = (await br.info(run.signal)).sets.find((s) => !before.has(s.label));
    if (!set) throw new Error('pgbackrest backup finished but info lists no new backup set');
    await run.progress(70, `verifying ${set.label} (pgbackrest verify)`);
    const verifyStarted = Date.now();
    const verdict = await br.verify(run.signal);
    const mine = verdict.sets.find((s) => s.label === set.label);
    if (mine?.status !== 'valid') {
      const state = mine ? `${mine.status} (${mine.detail})` : 'not in its output';
      throw new PermanentJobError(`pgbackrest verify: backup set ${set.label} is ${state}`, 'BACKUP_INVALID');
    }
    const warnings = verdict.ok
      ? []
      : [`the repository as a whole verifies as "${verdict.status}": ${verdict.archive.join('; ')}`];
    for (const w of warnings) await run.log(`warning: ${w}`);
    await run.progress(
      100,
      `backup set ${set.label} (${set.type}) verified: ${set.bytes} bytes, ${set.repositoryBytes} in the repository`,
    );
    return {
      engine: 'pgbackrest' as const,
      stanza: br.stanza,
      ...set,
      verified: {
        method: 'pgbackrest verify',
        status: mine.status,
        detail: mine.detail,
        seconds: (Date.now() - verifyStarted) / 1000,
      },
      warnings,
    };
  }

  async catalog(_backupDir: string, now = Date.now()): Promise<EngineCatalog> {
    const info = await this.br.info().catch((err: Error) => err);
    if (info instanceof Error) {
      const failed = { stanza: this.br.stanza, status: { code: -1, message: 'unreadable' }, cipher: 'unknown' };
      const pgbackrest = { ...failed, systemId: null, archive: null, sets: [], refused: [], error: info.message };
      return {
        sets: [],
        recoveryWindow: NO_WINDOW,
        windowMeasured: false,
        newestBaseBackupAt: undefined,
        refused: [],
        api: { pgbackrest },
      };
    }
    return {
      sets: info.sets.map((s) => ({
        label: s.label,
        type: s.type,
        prior: s.prior,
        startLsn: s.startLsn,
        stopLsn: s.stopLsn,
        startWal: s.startWal,
        stopWal: s.stopWal,
        startedAt: s.startedAt,
        stoppedAt: s.stoppedAt,
        bytes: s.bytes,
        storedBytes: s.repositoryBytes,
        usable: !s.error,
      })),
      recoveryWindow: window(info, now),
      windowMeasured: true,
      newestBaseBackupAt: info.sets.find((s) => !s.error)?.stoppedAt,
      refused: info.refused,
      api: { pgbackrest: info },
    };
  }

  /**
   * `pgbackrest check` (which forces a switch and waits for that segment in the repository), the
   * archive's min/max from `info`, pg_stat_archiver, and the .ready backlog (the asynchronous spool's,
   * when archive-async is on).
   */
  async archiveStatus(run: EngineRun, p: { waitSeconds: number; maxLagSegments: number }): Promise<ArchiveStatus> {
    const { br } = this;
    const problems: string[] = [];
    await run.progress(5, `pgbackrest check (stanza ${br.stanza})`);
    const started = Date.now();
    let archiveSeconds: number | null = null;
    try {
      await br.run(['check', `--archive-timeout=${p.waitSeconds}`], { signal: run.signal });
      archiveSeconds = (Date.now() - started) / 1000;
    } catch (err) {
      problems.push(`pgbackrest check failed: ${(err as Error).message}`);
    }
    const info = await br.info(run.signal);
    const { rows } = await run.pool.query<{
      last_archived_wal: string | null;
      last_archived_time: Date | null;
      failed_count: string;
      last_failed_wal: string | null;
      current_wal: string;
      segsize: string;
    }>(`select a.last_archived_wal, a.last_archived_time, a.failed_count, a.last_failed_wal,
              pg_walfile_name(pg_current_wal_lsn()) as current_wal, current_setting('wal_segment_size') as segsize
         from pg_stat_archiver a`);
    const s = rows[0]!;
    const pendingReady = await readyBacklog(run.pool);
    const segmentSize = parseSize(s.segsize);
    const segno = (name: string) => parseSegmentName(name, segmentSize)!.segno;
    const max = info.archive?.max;
    // Everything before the segment being written should be in the repository.
    const lagSegments = max ? Math.max(0, Number(segno(s.current_wal) - 1n - segno(max))) : null;
    const lagSeconds =
      lagSegments === 0
        ? 0
        : s.last_archived_time
          ? Math.round((Date.now() - s.last_archived_time.getTime()) / 1000)
          : null;
    if (lagSegments !== null && lagSegments > p.maxLagSegments) {
      problems.push(
        `archive lags ${lagSegments} segments (${lagSeconds} s) behind the server's current WAL ${s.current_wal}`,
      );
    }
    if (!info.archive) problems.push(`stanza ${br.stanza} has no archived WAL`);
    return {
      ok: problems.length === 0,
      engine: 'pgbackrest' as const,
      stanza: br.stanza,
      archiveSeconds,
      lagSegments,
      lagSeconds,
      pendingReady,
      currentWal: s.current_wal,
      archive: info.archive,
      pgStatArchiver: {
        lastArchivedWal: s.last_archived_wal,
        lastArchivedTime: s.last_archived_time?.toISOString() ?? null,
        failedCount: Number(s.failed_count),
        lastFailedWal: s.last_failed_wal,
      },
      recoveryWindow: window(info, Date.now()),
      warnings: [],
      problems,
    };
  }

  waitForArchived(run: Pick<EngineRun, 'signal'>, segment: string, timeoutMs: number): Promise<void> {
    return this.br.waitForArchived(segment, timeoutMs, run.signal);
  }

  /** The stanza was checked when the engine was made; pgBackRest checks the rest as it restores. */
  checkRestorable(): void {}

  /**
   * `pgbackrest restore --set --type=time|name|default --target --pg1-path`: pgBackRest checks every
   * file's checksum as it copies, and writes restore_command (archive-get) and the recovery target.
   */
  async restore(run: EngineRun, into: string, target: RestoreTarget, o: RestoreOptions = {}): Promise<RestoreOutcome> {
    const { br } = this;
    if (typeof target === 'object' && 'restorePoint' in target && /['\\\r\n]/.test(target.restorePoint)) {
      throw new PermanentJobError(
        `restore point "${target.restorePoint}": a quote, backslash or line break cannot be passed to pgBackRest`,
        'RESTORE_TARGET',
      );
    }
    await prepareRestoreDir(into, await liveDataDirectory(run.pool), o.owner);
    const set = await this.chooseSet(run, target, o);
    await run.log(restoringLine(set, target));
    await run.progress(12, `restoring ${set.label} into ${into}`);
    const started = Date.now();
    const type = target === 'latest' ? 'default' : 'time' in target ? 'time' : 'name';
    const value = target === 'latest' ? undefined : 'time' in target ? pgTime(target.time) : target.restorePoint;
    await br.restore({
      set: set.label,
      type,
      target: value,
      targetAction: o.targetAction,
      pgPath: into,
      signal: run.signal,
    });
    const recovery: Record<string, string> = {
      restore_command: br.restoreCommand(),
      ...(type === 'time' ? { recovery_target_time: value! } : type === 'name' ? { recovery_target_name: value! } : {}),
      ...(type === 'default' ? {} : { recovery_target_action: o.targetAction ?? 'promote' }),
    };
    return {
      dataDir: into,
      set: { label: set.label, stoppedAt: set.stoppedAt },
      seconds: (Date.now() - started) / 1000,
      verifySeconds: 0,
      recovery,
      startOptions: { pgbackrestOptions: true },
    };
  }

  /** The set named, or the newest that fits the target; held (shared) on `o.lock` against expiry. */
  private async chooseSet(run: EngineRun, target: RestoreTarget, o: RestoreOptions): Promise<PgbackrestSet> {
    const { br } = this;
    const info = await br.info(run.signal);
    for (const r of info.refused) await run.log(refusalLine(r));
    const before = typeof target === 'object' && 'time' in target ? Date.parse(target.time) : Infinity;
    const sets = info.sets.filter((s) => !s.error && Date.parse(s.stoppedAt) < before);
    const set = o.set ? sets.find((s) => s.label === o.set) : sets[0];
    if (!set) {
      const fits = before === Infinity ? '' : ` that stopped before ${describeTarget(target)}`;
      throw new PermanentJobError(
        o.set
          ? `backup set ${o.set}: not a backup set of stanza ${br.stanza}${fits}`
          : `no backup set of stanza ${br.stanza}${fits}; run base-backup first`,
        'NO_BASE_BACKUP',
      );
    }
    await o.lock?.query('select pg_advisory_lock_shared(hashtext($1))', [
      baseBackupLockKey(this.target.name, set.label),
    ]);
    return set;
  }

  /**
   * backups.base over full-backup chains (a full set and the diff and incr sets that depend on it), each
   * expired whole with `pgbackrest expire --set`, which also expires the WAL only those sets needed.
   */
  async planExpiry(
    run: EngineRun,
    o: { policy: RetentionPolicy; now: number; lock: pg.ClientBase },
  ): Promise<ExpiryPlan> {
    const { br } = this;
    const info = await br.info(run.signal);
    const { sets } = info;
    const chains = sets
      .filter((s) => s.type === 'full')
      .map((full) => ({
        full,
        members: sets.filter((s) => s.label === full.label || s.label.startsWith(`${full.label}_`)),
      }));
    const newestStop = (c: (typeof chains)[number]) => Math.max(...c.members.map((m) => Date.parse(m.stoppedAt)));
    const plan = planRetention(chains, newestStop, o.policy, o.now, true);
    // A refused set may belong to any chain: with one, no chain is expired.
    if (info.refused.length) {
      for (const d of plan.filter((d) => !d.keep)) {
        d.keep = true;
        d.reason = `pgbackrest info lists ${info.refused.length} set(s) that fail their checks; nothing is expired`;
      }
    }
    // A set a running drill restores from holds its shared lock: its chain stays.
    const skipped: { label: string; reason: string }[] = [];
    for (const d of plan.filter((d) => !d.keep)) {
      for (const m of d.item.members) {
        const { rows } = await o.lock.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1)) as ok', [
          baseBackupLockKey(this.target.name, m.label),
        ]);
        if (!rows[0]!.ok) {
          d.keep = true;
          d.reason = `${HELD_BY_DRILL} (set ${m.label})`;
        }
      }
      if (d.keep) skipped.push({ label: d.item.full.label, reason: d.reason });
    }
    const decisions = plan.map((d) => ({
      label: d.item.full.label,
      sets: d.item.members.map((m) => m.label),
      stoppedAt: new Date(newestStop(d.item)).toISOString(),
      action: d.keep ? ('keep' as const) : ('expire' as const),
      reason: d.reason,
    }));
    return {
      decisions,
      skipped,
      refused: info.refused,
      walFiles: [],
      notes: [],
      view: { engine: 'pgbackrest', stanza: br.stanza, backupSets: decisions },
    };
  }

  async applyExpiry(run: EngineRun, plan: ExpiryPlan, { dryRun }: { dryRun: boolean }): Promise<ExpiryOutcome> {
    const output: string[] = [];
    for (const d of plan.decisions.filter((d) => d.action !== 'keep')) {
      const args = ['expire', `--set=${d.label}`, '--log-level-console=info', ...(dryRun ? ['--dry-run'] : [])];
      const { stdout } = await this.br.run(args, { signal: run.signal });
      output.push(...stdout.split('\n').filter((l) => /expire|remove/.test(l) && !/command (begin|end)/.test(l)));
    }
    return { bytesFreed: 0, details: { pgbackrest: output } };
  }
}

/**
 * The window of a stanza: from the oldest set whose WAL is still in the repository's archive to the
 * present, as long as archiving keeps up (archive-check and the archive-lag alert watch that).
 */
function window(info: PgbackrestInfo, now: number): RecoveryWindow {
  const min = info.archive?.min;
  const usable = [...info.sets].reverse().find((s) => !s.error && min && s.startWal.slice(8) >= min.slice(8));
  if (!usable) return NO_WINDOW;
  return {
    earliest: usable.stoppedAt,
    latest: new Date(now).toISOString(),
    seconds: Math.max(0, Math.round((now - Date.parse(usable.stoppedAt)) / 1000)),
    fromBaseBackup: usable.label,
    brokenChains: [],
  };
}
