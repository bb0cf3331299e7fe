// Proven backups on a PostgreSQL cluster of this file's own (WAL archiving on):
// base backups and their verification, dumps with row counts and restore checks,
// archive health, the PITR drill, and pruning. The tests run in order and later
// ones break the archive on purpose.
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseBackupLockKey, baseDir, listBaseBackups, listDumps } from '../../src/backup/catalog.ts';
import { deploymentTag } from '../../src/core/config.ts';
import { splitManifest, verifyDataDir } from '../../src/backup/base-backup-files.ts';
import type { PostgresInstance } from '../../src/dev/devstack.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
/** This deployment's restore-check scratch databases (others share the test cluster). */
const scratchDatabases = () => `pgmaint_restore_check_${deploymentTag(rt.config)}_%`;
let cluster: PostgresInstance;
let db: pg.Pool;
const scratchDir = () => path.join(h.dir, 'scratch');

beforeAll(async () => {
  h = await createHarness('backups');
  ({ pg: cluster, pool: db } = await h.ownCluster());
  h.configFile({
    backups: {
      scratchDir: scratchDir(),
      drillTables: ['sales.sale_order', 'farm.milk_production'],
      dumps: { keepLast: 1, maxAgeDays: 1 },
      base: { keepLast: 1, maxAgeDays: 1 },
    },
    jobs: { 'archive-check': { timeoutMs: 60_000 } },
  });
  await db.query(`create schema sales; create schema farm;
    create table sales.sale_order (id bigint generated always as identity primary key, amount numeric not null,
      date_order timestamptz not null default now());
    insert into sales.sale_order (amount) select g * 1.5 from generate_series(1, 20000) g;
    create table farm.milk_production (animal_id int, day date, shift text, liters numeric);
    insert into farm.milk_production select g % 75, current_date - (g / 150), (array['morning','evening'])[1 + g % 2],
      10 + g % 7 from generate_series(1, 3000) g`);
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt);
});
afterAll(() => h.close());

async function run(job: string, payload: object = {}, timeoutMs = 120_000) {
  const { job: j } = await rt.queues.enqueue(job, payload);
  const { state, job: done } = await waitForFinished(rt.queues.get(job), j.id!, timeoutMs);
  const { logs } = await rt.queues.get(job).getJobLogs(j.id!);
  return {
    state,
    result: done.returnvalue as Record<string, any>,
    failedReason: done.failedReason,
    attempts: done.attemptsMade,
    logs: logs.join('\n'),
  };
}

const dotEntries = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((e) => e.startsWith('.')) : []);

describe('base-backup', () => {
  it('takes a tar/lz4 base backup, verifies it with pg_verifybackup and records LSNs and times', async () => {
    const r = await run('base-backup', {});
    expect(r.state).toBe('completed');
    expect(r.result).toMatchObject({
      format: 'tar',
      compression: 'lz4',
      startLsn: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/),
      startWal: expect.stringMatching(/^[0-9A-F]{24}$/),
    });
    expect(r.result.mbPerSecond).toBeGreaterThan(0);
    expect(r.logs).toMatch(/pg_verifybackup: every file and the WAL match the manifest/);
    const listed = (await listBaseBackups(h.backupDir, 'main')).bases;
    expect(listed.map((b) => b.manifest.label)).toEqual([r.result.label]);
    expect(fs.readdirSync(path.join(listed[0]!.path, 'data')).sort()).toEqual([
      'backup_manifest',
      'base.tar.lz4',
      'pg_wal.tar',
    ]);
    expect(dotEntries(baseDir(h.backupDir, 'main'))).toEqual([]);
  });

  it('a corrupted file in a base backup fails verification, naming the file; the drill refuses it', async () => {
    const r = await run('base-backup', { format: 'plain' });
    expect(r.state).toBe('completed');
    const data = path.join(r.result.path, 'data');
    await verifyDataDir(data, path.join(data, 'backup_manifest'));
    // Flip bytes in the middle of the biggest relation file of the dairy database.
    const dbDir = path.join(data, 'base');
    const files = fs
      .readdirSync(dbDir)
      .flatMap((d) => fs.readdirSync(path.join(dbDir, d)).map((f) => path.join(dbDir, d, f)));
    const victim = files.filter((f) => /\/\d+$/.test(f)).sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]!;
    const fd = fs.openSync(victim, 'r+');
    fs.writeSync(fd, Buffer.from('corrupted!'), 0, 10, Math.floor(fs.statSync(victim).size / 2));
    fs.closeSync(fd);
    const relative = path.relative(data, victim);
    const mismatch = `checksum mismatch for file "${relative}"`;
    // The files are checked by two processes; a file of the other one's share is damaged too.
    const [otherShare] = await splitManifest(path.join(data, 'backup_manifest'), 2);
    expect(otherShare).not.toContain(relative);
    const second = otherShare!.find((f) => /^base\/\d+\/\d+$/.test(f) && fs.statSync(path.join(data, f)).size > 0)!;
    fs.appendFileSync(path.join(data, second), 'x');
    try {
      const failure = await verifyDataDir(data, path.join(data, 'backup_manifest')).catch((e: Error) => e.message);
      expect(failure).toContain(`does not match its manifest: pg_verifybackup: error: ${mismatch}`);
      expect(failure).toContain(`"${second}" has size`);
      // The drill verifies what it restores: it never replays a damaged backup.
      const drill = await run('pitr-drill', {});
      expect(drill.state).toBe('failed');
      expect(drill.failedReason).toContain(mismatch);
      expect(fs.readdirSync(scratchDir())).toEqual([]);
    } finally {
      fs.rmSync(r.result.path, { recursive: true });
    }
  });

  it('refuses plain format with compression, naming the field', async () => {
    await expect(rt.queues.enqueue('base-backup', { format: 'plain', compression: 'gzip' })).rejects.toThrow(
      /compression: plain format cannot be compressed/,
    );
  });
});

describe('backup and restore-check', () => {
  it(
    'a directory-format dump with 2 jobs records row counts from its snapshot, and restore-check proves ' + 'them',
    async () => {
      const b = await run('backup', { format: 'directory', parallel: 2 });
      expect(b.state).toBe('completed');
      expect(b.result).toMatchObject({ format: 'directory', parallel: 2 });
      const [dump] = (await listDumps(h.backupDir, 'main')).dumps;
      expect(dump!.manifest.rowCounts).toMatchObject({ 'sales.sale_order': 20_000, 'farm.milk_production': 3000 });
      const r = await run('restore-check', {});
      expect(r.state).toBe('completed');
      expect(r.result).toMatchObject({ dump: dump!.manifest.file, rows: b.result.rows });
      expect(r.result.tablesCompared).toBeGreaterThanOrEqual(2);
      const record = JSON.parse(fs.readFileSync(`${dump!.path}.restore-check.json`, 'utf8'));
      expect(record).toMatchObject({ ok: true, mismatches: [] });
      // The scratch database is gone.
      const { rows } = await db.query(`select datname from pg_database where datname like $1`, [scratchDatabases()]);
      expect(rows).toEqual([]);
    },
  );

  it('restore-check catches a truncated dump and a dump that lost rows', async () => {
    const b = await run('backup', {});
    expect(b.state).toBe('completed');
    const file = b.result.file as string;
    const manifestFile = `${file}.manifest.json`;
    const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));

    // Counts that the dump does not hold (as if rows went missing between count and dump).
    fs.writeFileSync(
      manifestFile,
      JSON.stringify({ ...manifest, rowCounts: { ...manifest.rowCounts, 'sales.sale_order': 20_001 } }),
    );
    const lost = await run('restore-check', {});
    expect(lost.state).toBe('failed');
    expect(lost.failedReason).toMatch(/1 tables differ: sales\.sale_order dumped 20001, restored 20000/);

    // Truncated to half: the checksum no longer matches, nothing is restored.
    fs.writeFileSync(manifestFile, JSON.stringify(manifest));
    fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    const truncated = await run('restore-check', {});
    expect(truncated.state).toBe('failed');
    expect(truncated.attempts).toBe(1);
    expect(truncated.failedReason).toMatch(/is damaged: sha256 .* differs from its manifest/);
    const { rows } = await db.query(`select datname from pg_database where datname like $1`, [scratchDatabases()]);
    expect(rows).toEqual([]);
    fs.rmSync(manifestFile);
    fs.rmSync(file);
  });
});

describe('archive-check and pitr-drill', () => {
  it('archive-check on a healthy archive: the forced segment arrives, no lag, a recovery window', async () => {
    const r = await run('archive-check', { waitSeconds: 20 });
    expect(r.state).toBe('completed');
    expect(r.result).toMatchObject({ ok: true, lagSegments: 0, problems: [] });
    expect(r.result.archiveSeconds).toBeLessThan(20);
    expect(r.result.recoveryWindow.earliest).not.toBeNull();
    expect(r.result.newestBaseBackupAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(Date.parse(r.result.recoveryWindow.latest)).toBeGreaterThan(Date.parse(r.result.recoveryWindow.earliest));
  });

  it(
    'the PITR drill restores to T: M1 present, M2 absent, row counts at T, RTO and RPO reported, scratch ' + 'removed',
    async () => {
      const [base] = (await listBaseBackups(h.backupDir, 'main')).bases;
      // Rows written after the base backup must come from the WAL archive.
      await db.query(`insert into sales.sale_order (amount) select 1 from generate_series(1, 500)`);
      const r = await run('pitr-drill', {});
      expect(r.failedReason).toBeUndefined();
      expect(r.state).toBe('completed');
      expect(r.result).toMatchObject({ baseBackup: base!.manifest.label, walSegmentsReplayed: expect.any(Number) });
      expect(r.result.walSegmentsReplayed).toBeGreaterThan(0);
      expect(r.result.rtoSeconds).toBeGreaterThan(0);
      expect(r.result.rpoSeconds).toBeGreaterThanOrEqual(0);
      const checks = Object.fromEntries(
        (r.result.checks as { name: string; ok: boolean; detail: string }[]).map((c) => [c.name, c]),
      );
      expect(checks['M1 (written before T) present']!.ok).toBe(true);
      expect(checks['M2 (written after T) absent']!.ok).toBe(true);
      expect(checks['rows of sales.sale_order at T']).toMatchObject({
        ok: true,
        detail: 'live at T 20500, restored 20500',
      });
      expect(checks['recovery stopped at the target time']).toMatchObject({
        ok: true,
        detail: expect.stringMatching(/recovery stopping before commit/),
      });
      expect(fs.readdirSync(scratchDir())).toEqual([]);
      // The live archive still holds only what the live cluster wrote: no timeline 2 from the drill.
      expect(fs.readdirSync(cluster.walArchiveDir).filter((f) => f.startsWith('00000002'))).toEqual([]);
    },
  );
});

describe('prune-backups', () => {
  it(
    'keeps the newest, the backup that anchors the window and the WAL it needs; skips a backup a drill holds; ' +
      'dryRun changes nothing',
    async () => {
      // Three more base backups, then age them: 10, 5 and 0 days old (the policy: keep 1, 1 day).
      for (let i = 0; i < 2; i++) expect((await run('base-backup', { compression: 'gzip' })).state).toBe('completed');
      const bases = (await listBaseBackups(h.backupDir, 'main')).bases;
      expect(bases).toHaveLength(3);
      const [newest, middle, oldest] = bases as [(typeof bases)[0], (typeof bases)[0], (typeof bases)[0]];
      const age = (b: typeof newest, days: number) => {
        const file = path.join(b.path, 'pgmaint.json');
        const m = JSON.parse(fs.readFileSync(file, 'utf8'));
        fs.writeFileSync(
          file,
          JSON.stringify({ ...m, stoppedAt: new Date(Date.now() - days * 86_400_000).toISOString() }),
        );
      };
      age(middle, 5);
      age(oldest, 10);
      const walBefore = fs
        .readdirSync(cluster.walArchiveDir)
        .filter((f) => /^[0-9A-F]{24}$/.test(f))
        .sort();

      const dry = await run('prune-backups', { dryRun: true });
      expect(dry.state).toBe('completed');
      const actions = Object.fromEntries(
        (dry.result.plan.baseBackups as { label: string; action: string; reason: string }[]).map((b) => [b.label, b]),
      );
      expect(actions[newest.manifest.label]!.action).toBe('keep');
      expect(actions[middle.manifest.label]).toMatchObject({
        action: 'keep',
        reason: expect.stringMatching(/needed to restore to its start/),
      });
      expect(actions[oldest.manifest.label]!.action).toBe('remove');
      expect(dry.result.plan.wal.keepFrom).toBe(middle.manifest.startWal);
      expect((await listBaseBackups(h.backupDir, 'main')).bases).toHaveLength(3);
      expect(
        fs
          .readdirSync(cluster.walArchiveDir)
          .filter((f) => /^[0-9A-F]{24}$/.test(f))
          .sort(),
      ).toEqual(walBefore);

      // A drill holds the oldest: it stays, and so does its WAL.
      const holder = await db.connect();
      await holder.query('select pg_advisory_lock_shared(hashtext($1))', [
        baseBackupLockKey('main', oldest.manifest.label),
      ]);
      const held = await run('prune-backups', {});
      await holder.query('select pg_advisory_unlock_all()');
      holder.release();
      expect(held.state).toBe('completed');
      expect(held.result.skipped).toEqual([{ label: oldest.manifest.label, reason: 'in use by a running PITR drill' }]);
      expect((await listBaseBackups(h.backupDir, 'main')).bases.map((b) => b.manifest.label)).toContain(
        oldest.manifest.label,
      );

      const real = await run('prune-backups', {});
      expect(real.state).toBe('completed');
      expect((await listBaseBackups(h.backupDir, 'main')).bases.map((b) => b.manifest.label)).toEqual([
        newest.manifest.label,
        middle.manifest.label,
      ]);
      const walAfter = fs
        .readdirSync(cluster.walArchiveDir)
        .filter((f) => /^[0-9A-F]{24}$/.test(f))
        .sort();
      expect(walAfter.length).toBeLessThan(walBefore.length);
      expect(walAfter[0]).toBe(middle.manifest.startWal);
      expect(walAfter).toEqual(walBefore.filter((f) => f >= middle.manifest.startWal));
      expect(dotEntries(baseDir(h.backupDir, 'main'))).toEqual([]);
      // Dumps: only the newest is within policy (keep 1, 1 day) once the older one is aged.
      const dumps = (await listDumps(h.backupDir, 'main')).dumps;
      expect(dumps.length).toBeGreaterThanOrEqual(1);

      // What is left still restores: the drill passes on the pruned archive.
      const drill = await run('pitr-drill', {});
      expect(drill.failedReason).toBeUndefined();
      expect(drill.result.baseBackup).toBe(newest.manifest.label);
    },
  );
});

describe('failures', () => {
  async function setArchiveCommand(cmd: string) {
    await db.query(`alter system set archive_command = '${cmd.replace(/'/g, "''")}'`);
    await db.query('select pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 300));
  }

  it('archive-check fails when archive_command exits non-zero, and when it "succeeds" without copying', async () => {
    try {
      await setArchiveCommand('false');
      const failing = await run('archive-check', { waitSeconds: 3 });
      expect(failing.state).toBe('failed');
      expect(failing.failedReason).toMatch(
        new RegExp(
          'WAL archive unhealthy: archive_command is failing: segment [0-9A-F]{24} not archived within 3 s; ' +
            'pg_stat_archiver: [1-9]\\d* failures',
        ),
      );

      await setArchiveCommand('true');
      const silent = await run('archive-check', { waitSeconds: 3 });
      expect(silent.state).toBe('failed');
      expect(silent.failedReason).toMatch(
        new RegExp(
          'archive_command reports [0-9A-F]{24} archived but segment [0-9A-F]{24} is not in .*wal-archive: ' +
            'the command succeeds without copying there',
        ),
      );
    } finally {
      await db.query('alter system reset archive_command');
      await db.query('select pg_reload_conf()');
    }
  });

  it('the drill fails when WAL between the base backup and T is missing, and cleans up', async () => {
    // A fresh base backup (the test above left a hole behind the older ones), segments
    // written after it, then one of them lost from the archive.
    expect((await run('base-backup', {})).state).toBe('completed');
    await db.query(`insert into sales.sale_order (amount) select 2 from generate_series(1, 100)`);
    const { rows } = await db.query<{ seg: string }>('select pg_walfile_name(pg_switch_wal()) as seg');
    const lost = rows[0]!.seg;
    const deadline = Date.now() + 20_000;
    while (!fs.existsSync(path.join(cluster.walArchiveDir, lost)) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    await db.query(`insert into sales.sale_order (amount) select 3 from generate_series(1, 100)`);
    fs.rmSync(path.join(cluster.walArchiveDir, lost));

    const r = await run('pitr-drill', {});
    expect(r.state).toBe('failed');
    expect(r.failedReason).toMatch(/PITR drill failed: recovery ended before reaching T/);
    expect(r.logs).toMatch(/scratch instance stopped and .* deleted/);
    expect(fs.readdirSync(scratchDir())).toEqual([]);
    // archive-check names the gap too.
    const check = await run('archive-check', { waitSeconds: 10 });
    expect(check.state).toBe('failed');
    expect(check.failedReason).toContain(`WAL archive gap: segment ${lost} is missing after base backup`);
  });
});

describe('GET /api/backups', () => {
  it('lists dumps and base backups with verification state, the recovery window and the last drill', async () => {
    const { listBackups } = await import('../../src/http/handlers.ts');
    const { Auth } = await import('../../src/http/auth.ts');
    await rt.history.flush();
    const deps = { rt, auth: new Auth(undefined, undefined) };
    const res = await listBackups(deps, {
      params: {},
      query: { target: 'main' },
      body: undefined,
      role: 'viewer',
      secure: false,
    });
    expect(res.status).toBe(200);
    const body = res.body as Record<string, any>;
    expect(body.baseBackups.length).toBe(3);
    expect(body.baseBackups[0]).toMatchObject({ verified: { method: 'pg_verifybackup' } });
    expect(body.dumps[0]).toMatchObject({ rowCountsRecorded: true, verified: { method: 'pg_restore --list' } });
    expect(body.lastDrill).toMatchObject({ outcome: 'failed' });
    expect(body.newestBaseBackupAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(body.newestBaseBackupAgeSeconds).toBeLessThan(600);
    expect(body.recoveryWindow.brokenChains.length).toBeGreaterThan(0);
  });
});
