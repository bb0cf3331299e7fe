// restore-cluster on real parts, for both backup engines: a cluster of its own with WAL
// archiving (pgBackRest: a stanza in a posix repository), one base backup each, rows
// written after it, a time T, a marker row written after T. The restore to T holds the
// rows at T and not the marker; with a port and promote the server is left promoted
// and accepting connections, and outlives the worker that started it; without a port
// it is stopped, paused at T, ready to start. The refusals each name the field and why,
// and change nothing.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RestoreClusterResult } from '../../jobs/restore-cluster.ts';
import { INCOMPLETE_MARKER, stagingPathOf } from '../../src/backup/cluster-restore-checks.ts';
import { engineFor } from '../../src/backup/engines/index.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { loadConfig } from '../../src/core/config.ts';
import { freePort } from '../../src/core/local-postgres.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import { createStanza } from '../../src/dev/pgbackrest-stanza.ts';
import { createHarness, type Harness, waitForFinished } from '../support/harness.ts';

interface Fixture {
  name: string;
  prepare(h: Harness, cluster: Awaited<ReturnType<Harness['ownCluster']>>): Promise<object>;
  baseBackup: object;
}

const ENGINES: Fixture[] = [
  { name: 'native', prepare: async () => ({ engine: 'native' }), baseBackup: {} },
  {
    name: 'pgbackrest',
    async prepare(h, { pg: cluster, pool }) {
      const stanza = await createStanza(cluster, pool, h.dir);
      return { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile };
    },
    baseBackup: { type: 'full' },
  },
];

/** One cluster, one base backup, rows after it, T, a marker after T, archived: shared by the file's tests. */
async function setUp(fixture: Fixture, queues: string[]) {
  const h = await createHarness(`rcluster_${fixture.name}`);
  const cluster = await h.ownCluster();
  const backup = await fixture.prepare(h, cluster);
  h.configFile({ targets: { main: { backup } } });
  const { pool } = cluster;
  await pool.query(`create table ledger (id int primary key, note text not null);
    create table after_t (id int);
    insert into ledger select g, 'before the backup' from generate_series(1, 1000) g`);
  const rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, queues);
  const run = async (name: string, payload: object, timeoutMs = 120_000) => {
    const { job } = await rt.queues.enqueue(name, payload);
    return waitForFinished(rt.queues.get(name), job.id!, timeoutMs);
  };
  const b = await run('base-backup', fixture.baseBackup);
  expect(b.state, b.job.failedReason).toBe('completed');
  await pool.query(`insert into ledger select g, 'after the backup' from generate_series(1001, 1500) g`);
  const { rows } = await pool.query<{ t: string }>(
    `select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`,
  );
  const T = rows[0]!.t;
  await sleep(20);
  await pool.query(`insert into after_t values (1)`);
  // The marker's segment, archived: the window reaches past T.
  await pool.query('select pg_current_xact_id()');
  const seg = (await pool.query<{ s: string }>('select pg_walfile_name(pg_switch_wal()) as s')).rows[0]!.s;
  const config = loadConfig({ ...process.env, ...h.env });
  await engineFor(config.targets.get('main')!).waitForArchived({ signal: new AbortController().signal }, seg, 30_000);
  return { h, cluster, rt, run, T };
}

/** The PostgreSQL server left running on `dataDir` is stopped (afterAll). */
async function stopServer(dataDir: string) {
  if (!fs.existsSync(path.join(dataDir, 'postmaster.pid'))) return;
  const st = fs.statSync(dataDir);
  await runProcess(binPath('pg_ctl'), ['-D', dataDir, '-m', 'immediate', '-w', 'stop'], {
    uid: st.uid,
    gid: st.gid,
    cwd: '/',
  }).catch(() => undefined);
}

describe('restore-cluster with the native engine', () => {
  let s: Awaited<ReturnType<typeof setUp>>;
  let into: string;
  beforeAll(async () => {
    s = await setUp(ENGINES[0]!, ['base-backup']);
    into = path.join(s.h.dir, 'restored');
  }, 120_000);
  afterAll(async () => {
    await stopServer(into);
    await s?.h.close();
  });

  it('restores to T on a port and promotes: rows at T, no marker, the server outlives its worker', async () => {
    const { h, rt, T } = s;
    const port = await freePort();
    const worker = h.spawnPgmaint(['worker', '--queues', 'restore-cluster']);
    await worker.waitFor(/worker started/);
    // A worker process of its own (this file's runtime serves no restore-cluster here), killed afterwards.
    const { job } = await rt.queues.enqueue('restore-cluster', {
      into,
      time: T,
      port,
      promote: true,
      tables: ['public.ledger', 'public.after_t'],
    });
    const done = await waitForFinished(rt.queues.get('restore-cluster'), job.id!, 120_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    const r = done.job.returnvalue as RestoreClusterResult;
    expect(r).toMatchObject({ dataDir: into, port, running: true, promoted: true });
    expect(r.proof.rowCounts).toEqual({ 'public.ledger': 1500, 'public.after_t': 0 });
    expect(r.proof.stopLine).toMatch(/recovery stopping before commit of transaction \d+, time /);
    expect(Date.parse(r.proof.stoppedAt!)).toBeGreaterThan(Date.parse(T));
    expect(r.proof.walReplayed.first).toMatch(/^[0-9A-F]{24}$/);
    expect(r.nextSteps.join('\n')).toContain(`point the application at localhost:${port}`);
    expect(fs.existsSync(path.join(into, INCOMPLETE_MARKER))).toBe(false);
    expect(fs.existsSync(stagingPathOf(into))).toBe(false);

    await worker.killGroup();
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'dairy' });
    await c.connect();
    try {
      expect((await c.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(false);
      expect((await c.query('select count(*)::int as n from ledger')).rows[0].n).toBe(1500);
      expect((await c.query('select count(*)::int as n from after_t')).rows[0].n).toBe(0);
      await c.query(`insert into after_t values (2)`); // a primary: it takes writes
    } finally {
      await c.end();
    }
  });

  describe('refusals: each names the field and why, nothing changes', () => {
    beforeAll(async () => {
      await s.h.spawnPgmaint(['worker', '--queues', 'restore-cluster']).waitFor(/worker started/);
    });
    const refused = async (payload: object) => {
      const r = await s.run('restore-cluster', payload);
      expect(r.state).toBe('failed');
      return r.job.failedReason!;
    };

    it('a directory that is not empty', async () => {
      const busy = path.join(s.h.dir, 'busy');
      fs.mkdirSync(busy);
      fs.writeFileSync(path.join(busy, 'PG_VERSION'), '15\n');
      expect(await refused({ into: busy })).toMatch(
        new RegExp(`^REFUSED: into: ${busy} is not empty \\(1 entries, e.g. PG_VERSION\\)`),
      );
      expect(fs.readdirSync(busy)).toEqual(['PG_VERSION']);
    });

    it('a directory another running restore has claimed', async () => {
      const into = path.join(s.h.dir, 'claimed');
      const lock = path.join(s.h.dir, '.claimed.pgmaint-lock');
      fs.writeFileSync(lock, String(process.pid));
      expect(await refused({ into })).toMatch(
        new RegExp(`^REFUSED: into: another restore into ${into} is running \\(process ${process.pid}\\)`),
      );
      expect(fs.readFileSync(lock, 'utf8')).toBe(String(process.pid));
      fs.rmSync(lock);
    });

    it('the live data directory, or a directory inside it', async () => {
      const live = s.cluster.pg.dataDir;
      const before = fs.readdirSync(live).sort();
      for (const into of [live, path.join(live, 'base', 'restored')])
        expect(await refused({ into })).toMatch(/^REFUSED: into: .* is or overlaps the live data directory/);
      expect(fs.readdirSync(live).sort()).toEqual(before);
      expect(fs.existsSync(path.join(live, 'base', 'restored'))).toBe(false);
    });

    it('an unknown set, a time outside the recovery window, a port in use', async () => {
      const into = path.join(s.h.dir, 'never');
      expect(await refused({ into, set: 'main-20200101T000000000Z' })).toMatch(
        /^REFUSED: set: no verified base backup or set "main-20200101T000000000Z" \(1 listed, newest main-/,
      );
      expect(await refused({ into, time: '2020-01-01T00:00:00+00:00' })).toMatch(
        /^REFUSED: time: 2020-01-01T00:00:00\+00:00 is outside the recovery window \(.* to .*\)/,
      );
      expect(await refused({ into, time: '2099-01-01T00:00:00+06:00' })).toMatch(
        /^REFUSED: time: 2099-01-01T00:00:00\+06:00 is outside the recovery window/,
      );
      expect(await refused({ into, port: s.cluster.pg.port })).toMatch(
        new RegExp(`^REFUSED: port: ${s.cluster.pg.port} is already in use on localhost`),
      );
      expect(fs.existsSync(into)).toBe(false);
    });

    it('asked wrongly (400, exit 2): both time and restorePoint, an unknown key, a relative or own path', async () => {
      const into = path.join(s.h.dir, 'never');
      const issues = async (payload: object) =>
        rejected(() => s.rt.queues.enqueue('restore-cluster', payload)).then((e) => e.issues);
      expect(await issues({ into, time: '2026-12-03T10:00:00+06:00', restorePoint: 'before-upgrade' })).toEqual([
        { path: 'restorePoint', message: 'give time or restorePoint, not both (neither: the latest)' },
      ]);
      expect(await issues({ into, dryRun: true })).toEqual([
        { path: 'dryRun', message: expect.stringMatching(/^unknown field/) },
      ]);
      expect(await issues({ into: 'restored' })).toEqual([{ path: 'into', message: 'must be an absolute path' }]);
      expect(await issues({ into: path.join(s.h.backupDir, 'x') })).toEqual([
        { path: 'into', message: expect.stringMatching(/^is or overlaps BACKUP_DIR/) },
      ]);
      // The CLI: a refusal exits 2.
      const p = s.h.spawnPgmaint(['enqueue', 'restore-cluster', '--data', JSON.stringify({ into: 'x' }), '--wait']);
      expect(await p.exited, p.output()).toBe(2);
      expect(p.output()).toContain('into: must be an absolute path');
    });
  });
});

describe('restore-cluster with the pgbackrest engine', () => {
  let s: Awaited<ReturnType<typeof setUp>>;
  beforeAll(async () => {
    s = await setUp(ENGINES[1]!, ['base-backup', 'restore-cluster']);
  }, 120_000);
  afterAll(() => s?.h.close());

  it('restores to T without a port: rows at T, no marker, stopped paused at T, ready to start', async () => {
    const into = path.join(s.h.dir, 'restored');
    const r = await s.run('restore-cluster', { into, time: s.T, tables: ['public.ledger', 'public.after_t'] });
    expect(r.state, r.job.failedReason).toBe('completed');
    const result = r.job.returnvalue as RestoreClusterResult;
    expect(result).toMatchObject({ dataDir: into, running: false, promoted: false, set: expect.stringMatching(/F$/) });
    expect(result.proof).toMatchObject({ state: 'paused', rowCounts: { 'public.ledger': 1500, 'public.after_t': 0 } });
    expect(result.proof.stopLine).toMatch(/recovery stopping before commit/);
    expect(result.nextSteps[0]).toMatch(new RegExp(`pg_ctl -D ${into} -l \\S+ start$`));
    expect(result.nextSteps[1]).toMatch(new RegExp(`pg_ctl -D ${into} promote`));
    // Stopped cleanly, still in recovery to T: the next start pauses there again.
    expect(fs.existsSync(path.join(into, 'postmaster.pid'))).toBe(false);
    expect(fs.existsSync(path.join(into, 'recovery.signal'))).toBe(true);
    expect(fs.existsSync(path.join(into, INCOMPLETE_MARKER))).toBe(false);
    expect(fs.readFileSync(path.join(into, 'pg_hba.conf'), 'utf8')).not.toContain('pgmaint restore');
  });

  it('to the end of the archive without promote: a standby of the archive holding every row, stopped', async () => {
    const into = path.join(s.h.dir, 'latest');
    // What a killed run leaves: a staging directory, and a directory still marked incomplete.
    fs.mkdirSync(stagingPathOf(into), { recursive: true });
    fs.writeFileSync(path.join(stagingPathOf(into), 'PG_VERSION'), '15\n');
    fs.mkdirSync(into);
    fs.writeFileSync(path.join(into, INCOMPLETE_MARKER), '{}\n');
    fs.writeFileSync(path.join(into, 'PG_VERSION'), '15\n');
    const r = await s.run('restore-cluster', { into, tables: ['public.after_t'] });
    expect(r.state, r.job.failedReason).toBe('completed');
    const result = r.job.returnvalue as RestoreClusterResult;
    expect(result).toMatchObject({ target: 'latest', running: false, promoted: false });
    expect(result.proof).toMatchObject({ state: 'standby', stopLine: null, rowCounts: { 'public.after_t': 1 } });
    expect(fs.existsSync(path.join(into, 'standby.signal'))).toBe(true);
    expect(result.nextSteps[1]).toMatch(new RegExp(`pg_ctl -D ${into} promote`));
    expect(fs.existsSync(stagingPathOf(into))).toBe(false);
    expect(fs.existsSync(path.join(into, INCOMPLETE_MARKER))).toBe(false);
    const { logs } = await s.rt.queues.get('restore-cluster').getJobLogs(r.job.id!);
    expect(logs.join('\n')).toMatch(/removed .*pgmaint-restoring, left by a restore that did not finish/);
    expect(logs.join('\n')).toMatch(/emptied .*: a restore that did not finish left it/);
  });
});

async function rejected(fn: () => Promise<unknown>): Promise<{ issues: { path: string; message: string }[] }> {
  try {
    await fn();
  } catch (err) {
    return err as { issues: { path: string; message: string }[] };
  }
  throw new Error('not refused');
}
