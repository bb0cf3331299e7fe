// The backup-engine contract: the same cases against every engine in src/backup/engines/,
// each on a PostgreSQL cluster of its own (WAL archiving on; pgbackrest with a stanza in a
// posix repository). A base backup is taken and verified; the catalog lists it with its
// LSNs, times, sizes and a recovery window; it restores into a new directory to a time T,
// to a named restore point and to the end of the archive, and a server started there holds
// the rows at that point and nothing written after it; expiry keeps the set the window's
// start needs and one a drill holds. Adding an engine means passing this file.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseBackupLockKey } from '../../src/backup/catalog.ts';
import type { BackupEngine, BaseBackupOptions, EngineRun, RestoreTarget } from '../../src/backup/engine.ts';
import { engineFor } from '../../src/backup/engines/index.ts';
import { createScratchInstance } from '../../src/backup/scratch-instance.ts';
import { loadConfig } from '../../src/core/config.ts';
import { libpqSettings } from '../../src/core/libpq.ts';
import { createStanza } from '../../src/dev/pgbackrest-stanza.ts';
import { createHarness, type Harness, waitUntil } from '../support/harness.ts';

const DAY_MS = 86_400_000;
const LSN = /^[0-9A-F]+\/[0-9A-F]+$/;
const SEGMENT = /^[0-9A-F]{24}$/;

interface EngineFixture {
  name: string;
  /** Gives the harness's own cluster what the engine needs; returns the target's `backup` settings. */
  prepare(h: Harness, cluster: Awaited<ReturnType<Harness['ownCluster']>>): Promise<object>;
  /** base-backup's options for a full backup with this engine. */
  full: BaseBackupOptions;
}

const ENGINES: EngineFixture[] = [
  {
    name: 'native',
    prepare: async () => ({ engine: 'native' }),
    full: { format: 'tar', checkpoint: 'fast' },
  },
  {
    name: 'pgbackrest',
    async prepare(h, { pg: cluster, pool }) {
      const stanza = await createStanza(cluster, pool, h.dir);
      return { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile };
    },
    full: { format: 'tar', checkpoint: 'fast', type: 'full' },
  },
];

describe.each(ENGINES)('the $name backup engine', (fixture) => {
  let h: Harness;
  let pool: pg.Pool;
  let liveDataDir: string;
  let engine: BackupEngine;
  let run: EngineRun;
  let user: string;
  const taken: { label: string; stoppedAt: string }[] = [];

  beforeAll(async () => {
    h = await createHarness(`contract_${fixture.name}`);
    const cluster = await h.ownCluster();
    pool = cluster.pool;
    liveDataDir = cluster.pg.dataDir;
    const backup = await fixture.prepare(h, cluster);
    h.configFile({ targets: { main: { backup } } });
    const config = loadConfig({ ...process.env, ...h.env });
    const target = config.targets.get('main')!;
    engine = engineFor(target);
    run = {
      jobId: `contract-${fixture.name}`,
      config,
      target,
      pool,
      signal: new AbortController().signal,
      libpqSettings: () => libpqSettings(target, 'pgmaint/contract'),
      progress: async () => undefined,
      log: async () => undefined,
    };
    user = (await pool.query<{ u: string }>('select current_user as u')).rows[0]!.u;
    await pool.query(`create table ledger (id int primary key, note text not null);
      insert into ledger select g, 'before the backup' from generate_series(1, 1000) g`);
  });
  afterAll(() => h.close());

  /** Closes the current WAL segment and waits for it in the engine's archive. A transaction first, so that
   * there is WAL to switch away from: without it the switch may name a segment archived long before. */
  async function archiveNow(): Promise<void> {
    await pool.query('select pg_current_xact_id()');
    const { rows } = await pool.query<{ seg: string }>('select pg_walfile_name(pg_switch_wal()) as seg');
    await engine.waitForArchived(run, rows[0]!.seg, 30_000);
  }

  /** Restores into a new directory, starts a server there (its own port, the postgres OS user), waits for
   * promotion, and hands back the ledger's rows. */
  async function restoreAndRead(target: RestoreTarget, set?: string): Promise<{ ids: number[]; label: string }> {
    const scratch = await createScratchInstance(path.join(h.dir, 'restores'));
    const lock = await pool.connect();
    try {
      const restored = await engine.restore(run, scratch.dataDir, target, { owner: scratch.owner, lock, set });
      expect(restored.recovery.restore_command).toBeTruthy();
      expect(fs.existsSync(path.join(scratch.dataDir, 'recovery.signal'))).toBe(true);
      await scratch.configure({
        port: scratch.port,
        listen_addresses: '',
        unix_socket_directories: scratch.socketDir,
        archive_mode: 'off',
        hot_standby: 'off',
        logging_collector: 'off',
      });
      await scratch.start(undefined, restored.startOptions);
      await waitUntil(
        async () => {
          if (/recovery ended before configured recovery target/.test(await scratch.log())) {
            throw new Error(`recovery failed: ${(await scratch.log()).slice(-2000)}`);
          }
          const c = scratch.client(user, 'dairy');
          try {
            await c.connect();
            return !(await c.query<{ r: boolean }>('select pg_is_in_recovery() as r')).rows[0]!.r;
          } catch {
            return false;
          } finally {
            await c.end().catch(() => undefined);
          }
        },
        60_000,
        `the restored server to be promoted (log: ${scratch.logFile})`,
      );
      const c = scratch.client(user, 'dairy');
      await c.connect();
      try {
        const { rows } = await c.query<{ id: number }>('select id from ledger order by id');
        return { ids: rows.map((r) => r.id), label: restored.set.label };
      } finally {
        await c.end();
      }
    } finally {
      await lock.query('select pg_advisory_unlock_all()').catch(() => undefined);
      lock.release();
      await scratch.destroy();
    }
  }

  it('takes a base backup and verifies it', async () => {
    const b = await engine.baseBackup(run, fixture.full);
    expect(b.label).toBeTruthy();
    expect(b.startLsn).toMatch(LSN);
    expect(b.stopLsn).toMatch(LSN);
    expect(b.startWal).toMatch(SEGMENT);
    expect(b.verified.method).toMatch(/pg_verifybackup|pgbackrest verify/);
    expect(b.verified.seconds).toBeGreaterThanOrEqual(0);
    expect(Date.parse(b.stoppedAt)).toBeGreaterThanOrEqual(Date.parse(b.startedAt));
    taken.push({ label: b.label, stoppedAt: b.stoppedAt });
  });

  it('lists it in the catalog with its LSNs, times and sizes, and a recovery window from it', async () => {
    await archiveNow();
    const catalog = await engine.catalog(h.backupDir);
    const [set] = catalog.sets;
    expect(catalog.sets).toHaveLength(1);
    expect(set).toMatchObject({ label: taken[0]!.label, type: 'full', usable: true });
    expect(set!.startLsn).toMatch(LSN);
    expect(set!.stopLsn).toMatch(LSN);
    expect(set!.stopWal).toMatch(SEGMENT);
    expect(set!.stopWal >= set!.startWal).toBe(true);
    expect(set!.bytes).toBeGreaterThan(1_000_000);
    expect(set!.storedBytes).toBeGreaterThan(0);
    expect(catalog.newestBaseBackupAt).toBe(set!.stoppedAt);
    expect(catalog.windowMeasured).toBe(true);
    expect(catalog.recoveryWindow).toMatchObject({ fromBaseBackup: set!.label, earliest: set!.stoppedAt });
    expect(Date.parse(catalog.recoveryWindow.latest!)).toBeGreaterThan(Date.parse(set!.stoppedAt));
  });

  it('refuses to restore into a directory that is not empty, or into the live data directory', async () => {
    const busy = path.join(h.dir, 'busy');
    fs.mkdirSync(busy);
    fs.writeFileSync(path.join(busy, 'PG_VERSION'), '15\n');
    await expect(engine.restore(run, busy, 'latest')).rejects.toMatchObject({
      code: 'RESTORE_DIR',
      message: expect.stringMatching(new RegExp(`^restore directory ${busy}: is not empty`)),
    });
    await expect(engine.restore(run, liveDataDir, 'latest')).rejects.toMatchObject({
      code: 'RESTORE_DIR',
      message: expect.stringContaining('is the live data directory of the target'),
    });
    await expect(engine.restore(run, path.join(liveDataDir, 'base', 'restored'), 'latest')).rejects.toMatchObject({
      code: 'RESTORE_DIR',
    });
    expect(fs.existsSync(path.join(liveDataDir, 'base', 'restored'))).toBe(false);
    expect(fs.readdirSync(busy)).toEqual(['PG_VERSION']);
  });

  it('restores to a time T: the rows at T are there, a row written after T is not', async () => {
    // Rows after the base backup come back from the archive.
    await pool.query(`insert into ledger select g, 'after the backup' from generate_series(1001, 1500) g`);
    const { rows } = await pool.query<{ t: string }>(
      `select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`,
    );
    const T = rows[0]!.t;
    await sleep(20);
    await pool.query(`insert into ledger values (5000, 'after T')`);
    await archiveNow();
    const restored = await restoreAndRead({ time: T });
    expect(restored.label).toBe(taken[0]!.label);
    expect(restored.ids).toHaveLength(1500);
    expect(restored.ids).not.toContain(5000);
  });

  it('restores to a named restore point, and to the end of the archive', async () => {
    await pool.query(`insert into ledger values (6000, 'before the point')`);
    await pool.query(`select pg_create_restore_point('contract-point')`);
    await pool.query(`insert into ledger values (7000, 'after the point')`);
    await archiveNow();
    const atPoint = await restoreAndRead({ restorePoint: 'contract-point' });
    expect(atPoint.ids).toContain(6000);
    expect(atPoint.ids).not.toContain(7000);
    const latest = await restoreAndRead('latest');
    expect(latest.ids).toEqual(expect.arrayContaining([5000, 6000, 7000]));
    expect(latest.ids).toHaveLength(1503);
  });

  it('plans expiry that keeps the recovery window: the set its start needs stays, an older one goes', async () => {
    // Two more full backups, in different seconds (pgBackRest's times are whole seconds).
    for (let i = 0; i < 2; i++) {
      await sleep(1100);
      const b = await engine.baseBackup(run, fixture.full);
      taken.push({ label: b.label, stoppedAt: b.stoppedAt });
    }
    const [a, b, c] = taken as [(typeof taken)[0], (typeof taken)[0], (typeof taken)[0]];
    // The window starts between the second and the third backup: the third alone cannot restore to its
    // start, the second can; the first is needed by nothing.
    const now = Date.parse(c.stoppedAt) + 1000;
    const windowStart = (Date.parse(b.stoppedAt) + Date.parse(c.stoppedAt)) / 2;
    const policy = { keepLast: 1, maxAgeDays: (now - windowStart) / DAY_MS };
    const action = (plan: Awaited<ReturnType<BackupEngine['planExpiry']>>, label: string) =>
      plan.decisions.find((d) => d.label === label);

    // A drill holds the oldest (its shared lock, on a session of its own): it stays, with the reason.
    const drill = await pool.connect();
    const lock = await pool.connect();
    try {
      await drill.query('select pg_advisory_lock_shared(hashtext($1))', [baseBackupLockKey('main', a.label)]);
      const held = await engine.planExpiry(run, { policy, now, lock });
      expect(action(held, a.label)).toMatchObject({
        action: 'keep',
        reason: expect.stringMatching(/in use by a running PITR drill/),
      });
      expect(held.skipped.map((s) => s.label)).toEqual([a.label]);
      await lock.query('select pg_advisory_unlock_all()');
      await drill.query('select pg_advisory_unlock_all()');

      const plan = await engine.planExpiry(run, { policy, now, lock });
      expect(action(plan, c.label)).toMatchObject({ action: 'keep', reason: 'among the newest 1' });
      expect(action(plan, b.label)).toMatchObject({
        action: 'keep',
        reason: expect.stringMatching(/needed to restore to its start/),
      });
      expect(action(plan, a.label)!.action).not.toBe('keep');
      const dry = await engine.applyExpiry(run, plan, { dryRun: true });
      expect(dry.bytesFreed).toBe(0);
      expect((await engine.catalog(h.backupDir)).sets.map((s) => s.label)).toContain(a.label);

      await engine.applyExpiry(run, plan, { dryRun: false });
    } finally {
      await lock.query('select pg_advisory_unlock_all()').catch(() => undefined);
      await drill.query('select pg_advisory_unlock_all()').catch(() => undefined);
      lock.release();
      drill.release();
    }
    await archiveNow();
    const after = await engine.catalog(h.backupDir);
    expect(after.sets.map((s) => s.label)).toEqual([c.label, b.label]);
    // The window still reaches back to its start, from the second backup.
    expect(after.recoveryWindow.fromBaseBackup).toBe(b.label);
    expect(Date.parse(after.recoveryWindow.earliest!)).toBeLessThanOrEqual(windowStart);
  });
});
