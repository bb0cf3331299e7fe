// The pgBackRest engine on a real cluster and a real repository: base-backup takes
// full and incremental sets and verifies them, the drill restores from the
// repository, prune expires by the recovery window, and the catalog shows the sets.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveCheckResult } from '../../jobs/archive-check.ts';
import type { BaseBackupResult } from '../../jobs/base-backup.ts';
import type { PitrDrillResult } from '../../jobs/pitr-drill.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createStanza, type Stanza } from '../../src/dev/pgbackrest-stanza.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let pool: import('pg').Pool;
let stanza: Stanza;
let dataDir: string;

beforeAll(async () => {
  h = await createHarness('pgbackrest');
  const own = await h.ownCluster();
  pool = own.pool;
  dataDir = own.pg.dataDir;
  stanza = await createStanza(own.pg, pool, h.dir);
  h.configFile({
    targets: { main: { backup: { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile } } },
    // A window of ~9 s, so that sets taken earlier in this file fall out of it.
    backups: {
      drillTables: ['public.ledger'],
      scratchDir: path.join(h.dir, 'scratch'),
      base: { keepLast: 1, maxAgeDays: 0.0001 },
    },
  });
  await pool.query('create table ledger as select g as id from generate_series(1, 5000) g');
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['base-backup', 'pitr-drill', 'archive-check', 'prune-backups']);
});
afterAll(() => h.close());

async function run(name: string, payload: object, timeoutMs = 120_000) {
  const { job } = await rt.queues.enqueue(name, payload);
  return waitForFinished(rt.queues.get(name), job.id!, timeoutMs);
}

describe('base-backup with the pgbackrest engine', () => {
  it('takes a full and then an incremental set, each verified by pgbackrest verify, recorded from info', async () => {
    const full = await run('base-backup', { type: 'full' });
    expect(full.state, full.job.failedReason).toBe('completed');
    expect(full.job.returnvalue).toMatchObject({
      engine: 'pgbackrest',
      stanza: 'main',
      type: 'full',
      label: expect.stringMatching(/^\d{8}-\d{6}F$/),
      startLsn: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/),
      startWal: expect.stringMatching(/^[0-9A-F]{24}$/),
      verified: { method: 'pgbackrest verify', status: 'valid' },
    });
    await pool.query('insert into ledger select g from generate_series(5001, 6000) g');
    const incr = await run('base-backup', { type: 'incr' });
    expect(incr.state, incr.job.failedReason).toBe('completed');
    const first = full.job.returnvalue as BaseBackupResult;
    assert(!('skipped' in first), 'the full base backup skipped');
    const r = incr.job.returnvalue as BaseBackupResult;
    assert(!('skipped' in r), 'the incremental base backup skipped');
    expect(r.type).toBe('incr');
    expect(r.prior).toBe(first.label);
    // type and prior are the pgbackrest engine's details: the job's result types them unknown.
    assert(typeof r.prior === 'string', 'the incremental set names no prior');
    expect(r.label.startsWith(r.prior)).toBe(true);
  });

  it('refuses options that belong to pgbackrest.conf, naming them', async () => {
    await expect(rt.queues.enqueue('base-backup', { maxRate: '10M', compression: 'gzip' })).rejects.toMatchObject({
      issues: [
        { path: 'compression', message: expect.stringMatching(/pgbackrest\.conf/) },
        { path: 'maxRate', message: expect.stringMatching(/pgbackrest\.conf/) },
      ],
    });
  });
});

describe('pitr-drill from the pgBackRest repository', () => {
  it('restores a set to T into the scratch instance: markers, row counts, RTO and RPO', async () => {
    const live = fs.readdirSync(path.join(h.dir, 'pg', 'data')).length;
    const r = await run('pitr-drill', {});
    expect(r.state, r.job.failedReason).toBe('completed');
    const result = r.job.returnvalue as PitrDrillResult;
    expect(result.baseBackup).toMatch(/^\d{8}-\d{6}F(_\d{8}-\d{6}I)?$/);
    expect(result.checks.map((c) => [c.name, c.ok])).toEqual(
      expect.arrayContaining([
        ['M1 (written before T) present', true],
        ['M2 (written after T) absent', true],
        ['rows of public.ledger at T', true],
        ['recovery stopped at the target time', true],
      ]),
    );
    expect(result.rtoSeconds).toBeGreaterThan(0);
    // The scratch directory is gone; the live data directory was never a restore target.
    expect(fs.readdirSync(path.join(h.dir, 'scratch'))).toEqual([]);
    expect(fs.readdirSync(path.join(h.dir, 'pg', 'data')).length).toBe(live);
    const { logs } = await rt.queues.get('pitr-drill').getJobLogs(r.job.id!);
    expect(logs.join('\n')).toMatch(/restoring base backup \d{8}-\d{6}F/);
  });

  it('fails clearly when WAL between the set and T is missing from the repository, and cleans up', async () => {
    const archive = path.join(stanza.repoPath, 'archive', 'main');
    const walDir = path.join(archive, fs.readdirSync(archive).find((d) => /^15-\d+$/.test(d))!);
    const segDir = path.join(walDir, fs.readdirSync(walDir).find((d) => /^[0-9A-F]{16}$/.test(d))!);
    // A new full set, then the first WAL segment after it vanishes from the repository.
    const full = await run('base-backup', { type: 'full' });
    expect(full.state, full.job.failedReason).toBe('completed');
    const fullResult = full.job.returnvalue as BaseBackupResult;
    assert(!('skipped' in fullResult), 'the full base backup skipped');
    const stopWal = fullResult.stopWal;
    await pool.query('insert into ledger select g from generate_series(6001, 7000) g');
    await pool.query('select pg_switch_wal()');
    const next = (BigInt(`0x${stopWal.slice(16)}`) + 1n).toString(16).toUpperCase().padStart(8, '0');
    const missing = `${stopWal.slice(0, 16)}${next}`;
    const deadline = Date.now() + 20_000;
    let gone = false;
    while (!gone && Date.now() < deadline) {
      // Only the segment once stored: removing pgBackRest's temporary file while it is
      // written makes that push fail, and PostgreSQL pushes the segment again.
      const stored = (f: string) => f.startsWith(missing) && !f.endsWith('.pgbackrest.tmp');
      for (const f of fs.readdirSync(segDir).filter(stored)) {
        fs.rmSync(path.join(segDir, f));
        gone = true;
      }
      if (!gone) await new Promise((r) => setTimeout(r, 200));
    }
    expect(gone).toBe(true);
    const r = await run('pitr-drill', {});
    expect(r.state).toBe('failed');
    expect(r.job.failedReason).toMatch(
      /recovery ended before reaching T|did not reach|before the configured recovery target/i,
    );
    expect(fs.readdirSync(path.join(h.dir, 'scratch'))).toEqual([]);
  });
});

describe('archive-check, prune-backups and the catalog with the pgbackrest engine', () => {
  it('archive-check runs pgbackrest check and reports the repository archive and the lag', async () => {
    const r = await run('archive-check', { waitSeconds: 30 });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue).toMatchObject({
      ok: true,
      engine: 'pgbackrest',
      archive: { min: expect.stringMatching(/^[0-9A-F]{24}$/), max: expect.stringMatching(/^[0-9A-F]{24}$/) },
      lagSegments: expect.any(Number),
      recoveryWindow: { fromBaseBackup: expect.stringMatching(/F$/) },
    });
    expect((r.job.returnvalue as ArchiveCheckResult).lagSegments).toBeLessThanOrEqual(2);
  });

  it('GET /api/backups shows the stanza, its sets and the recovery window', async () => {
    const { listBackups } = await import('../../src/http/handlers.ts');
    const { Auth } = await import('../../src/http/auth.ts');
    const res = await listBackups(
      { rt, auth: new Auth(undefined, undefined) },
      { params: {}, query: {}, body: undefined, secure: false },
    );
    const body = res.body as Record<string, any>;
    expect(body.engine).toBe('pgbackrest');
    expect(body.pgbackrest.sets.length).toBeGreaterThanOrEqual(2);
    expect(body.pgbackrest.sets[0]).toMatchObject({
      label: expect.any(String),
      type: expect.any(String),
      stopWal: expect.any(String),
    });
    expect(body.newestBaseBackupAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(body.recoveryWindow.seconds).toBeGreaterThan(0);
    // The stanza's system id, a 64-bit integer, to the last digit: what pg_controldata says of the cluster.
    const control = await runProcess(binPath('pg_controldata'), [dataDir]);
    const systemId = /^Database system identifier:\s+(\d+)$/m.exec(control.stdout)![1]!;
    expect(systemId.length).toBeGreaterThan(16);
    expect(body.pgbackrest.systemId).toBe(systemId);
  });

  it('expires chains outside the window, never one a drill holds; dryRun expires nothing', async () => {
    const labels = async () =>
      (await stanza.pgbackrest(['info', '--output=json'])).stdout.match(/"label":"[^"]+"/g) ?? [];
    // Every set must be older than the ~9 s window, so the newest anchors it and the older chain may go.
    const stops = (await stanza.pgbackrest(['info', '--output=json'])).stdout.match(/"stop":(\d{10})/g) ?? [];
    const newestStop = Math.max(...stops.map((x) => Number(x.slice(7))));
    await new Promise((r) => setTimeout(r, Math.max(0, newestStop * 1000 + 10_000 - Date.now())));
    const before = await labels();
    const oldestFull = JSON.parse(`{${before[0]}}`).label as string;
    // A drill holds the oldest chain: it stays, with the reason.
    const holder = await pool.connect();
    await holder.query('select pg_advisory_lock_shared(hashtext($1))', [`pgmaint:base-backup:main:${oldestFull}`]);
    const held = await run('prune-backups', {});
    await holder.query('select pg_advisory_unlock_all()');
    holder.release();
    expect(held.state, held.job.failedReason).toBe('completed');
    type Plan = { plan: { backupSets: { label: string; action: string; reason: string }[] } };
    const heldPlan = (held.job.returnvalue as Plan).plan.backupSets.find((c) => c.label === oldestFull)!;
    expect(heldPlan).toMatchObject({ action: 'keep', reason: expect.stringMatching(/in use by a running PITR drill/) });
    expect(await labels()).toEqual(before);

    const dry = await run('prune-backups', { dryRun: true });
    const planned = (dry.job.returnvalue as Plan).plan.backupSets;
    expect(planned.find((c) => c.label === oldestFull)!.action).toBe('expire');
    expect(planned[0]!.action).toBe('keep');
    expect(await labels()).toEqual(before);

    const real = await run('prune-backups', {});
    expect(real.state, real.job.failedReason).toBe('completed');
    const after = await labels();
    expect(after.some((l) => l.includes(oldestFull))).toBe(false);
    expect(after.length).toBeGreaterThan(0);
  });
});

describe("pgBackRest's own retention", () => {
  it('with repo1-retention-full set, a backup expires nothing by itself: only prune-backups expires', async () => {
    const labels = async () =>
      ((await stanza.pgbackrest(['info', '--output=json'])).stdout.match(/"label":"[^"]+"/g) ?? []).map(
        (l) => JSON.parse(`{${l}}`).label as string,
      );
    const before = await labels();
    expect(before.some((l) => /F$/.test(l))).toBe(true);
    // pgBackRest would keep one full set and expire the older ones right after the backup.
    const conf = fs.readFileSync(stanza.configFile, 'utf8');
    fs.writeFileSync(stanza.configFile, `${conf}repo1-retention-full=1\nrepo1-retention-diff=1\n`);
    try {
      const full = await run('base-backup', { type: 'full' });
      expect(full.state, full.job.failedReason).toBe('completed');
      const after = await labels();
      expect(after).toEqual([...before, (full.job.returnvalue as { label: string }).label]);
    } finally {
      fs.writeFileSync(stanza.configFile, conf);
    }
  });
});

describe('a damaged repository', () => {
  it('a set whose file was damaged in the repository fails verification, naming the set', async () => {
    const ok = await run('base-backup', { type: 'full' });
    const result = ok.job.returnvalue as BaseBackupResult;
    assert(!('skipped' in result), 'the full base backup skipped');
    const label = result.label;
    const file = path.join(stanza.repoPath, 'backup', 'main', label, 'pg_data', 'PG_VERSION.lz4');
    fs.writeFileSync(file, 'not what was backed up');
    // The next backup is an incremental on top of the damaged full: verify names both.
    const bad = await run('base-backup', { type: 'incr' });
    expect(bad.state).toBe('failed');
    expect(bad.job.failedReason).toMatch(/pgbackrest verify: backup set \S+ is invalid \(.*checksum invalid: 1/);
  });
});
