import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import { binPath, runPipeline, runProcess } from '../../src/core/proc.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

const policies = [
  { table: 'ret.daily', column: 'ts', interval: 'day', retention: '5 days' },
  { table: 'ret.fragile', column: 'ts', interval: 'day', retention: '1 day' },
  { table: 'ret.pending', column: 'ts', interval: 'day', retention: '1 day' },
  { table: 'ret.gap', column: 'ts', interval: 'day', retention: '1 day' },
  { table: 'ret.legacy', column: 'ts', interval: 'day', retention: '1 day' },
  { table: 'ret.cut', column: 'ts', interval: 'day', retention: '1 day' },
];

async function dailyTable(name: string, days: number, withDefault = false) {
  await h.admin.query(`create table ret.${name} (ts timestamptz not null, v int) partition by range (ts)`);
  for (let d = 1; d <= days; d++) {
    const day = `2026-01-${String(d).padStart(2, '0')}`;
    const next = new Date(Date.parse(`${day}T00:00:00Z`) + 86400_000).toISOString().slice(0, 10);
    await h.admin.query(
      `create table ret.${name}_p${day.replace(/-/g, '')} partition of ret.${name} for values from ('${day} ` +
        `00:00+00') to ('${next} 00:00+00')`,
    );
    await h.admin.query(
      `insert into ret.${name} select '${day} 06:00+00'::timestamptz + make_interval(mins => g), g from ` +
        `generate_series(1, 10) g`,
    );
  }
  if (withDefault) await h.admin.query(`create table ret.${name}_default partition of ret.${name} default`);
}

async function partitions(table: string): Promise<string[]> {
  const { rows } = await h.admin.query(
    `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = $1::regclass ` +
      `order by 1`,
    [table],
  );
  return rows.map((r) => r.relname);
}

/** A PG_BINDIR whose pg_dump is a shell script of `body`; the other tools are PostgreSQL's own. */
function pgDumpReplacedBy(name: string, body: string): string {
  const real = path.dirname(binPath('pg_dump'));
  const bin = path.join(h.dir, name);
  fs.mkdirSync(bin, { recursive: true });
  for (const tool of fs.readdirSync(real))
    if (tool !== 'pg_dump') fs.symlinkSync(path.join(real, tool), path.join(bin, tool));
  fs.writeFileSync(path.join(bin, 'pg_dump'), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return bin;
}

beforeAll(async () => {
  h = await createHarness('retention');
  // One attempt: a retry would plan only what the first left, and hide why it failed.
  h.configFile({ partitions: policies, jobs: { 'drop-expired-partitions': { attempts: 1 } } });
  await h.admin.query('create schema ret');
  await dailyTable('daily', 10);
  await dailyTable('fragile', 3, true);
  await dailyTable('pending', 3);
  await dailyTable('gap', 3);
  await dailyTable('legacy', 3);
  await dailyTable('cut', 3);
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['drop-expired-partitions']);
});
afterAll(() => h.close());

async function run(payload: object, runtime = rt) {
  const { job } = await runtime.queues.enqueue('drop-expired-partitions', payload);
  return waitForFinished(runtime.queues.get('drop-expired-partitions'), job.id!);
}

describe('drop-expired-partitions', () => {
  it('dry run returns the exact plan and changes nothing; the real run executes that plan', async () => {
    const before = await partitions('ret.daily');
    const dry = await run({ tables: ['ret.daily'], dryRun: true, now: '2026-01-10T12:00:00Z' });
    expect(dry.state).toBe('completed');
    const dryPolicy = (dry.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    // Cut-off 2026-01-05 12:00: days 1–4 end at or before it; day 5 ends after it.
    expect(dryPolicy.plan.filter((s) => s.action === 'drop').map((s) => s.partition)).toEqual([
      'ret.daily_p20260101',
      'ret.daily_p20260102',
      'ret.daily_p20260103',
      'ret.daily_p20260104',
    ]);
    expect(dryPolicy.plan.find((s) => s.action === 'detach')!.sql).toMatch(
      /detach partition "ret"."daily_p20260101" concurrently$/,
    );
    expect(await partitions('ret.daily')).toEqual(before);
    expect(fs.existsSync(path.join(h.backupDir, 'partitions'))).toBe(false);

    const real = await run({ tables: ['ret.daily'], now: '2026-01-10T12:00:00Z' });
    expect(real.state).toBe('completed');
    // One attempt: a retry would plan only what the first left, and hide why it failed.
    const { logs } = await rt.queues.get('drop-expired-partitions').getJobLogs(real.job.id!);
    expect(real.job.attemptsMade, logs.join('\n')).toBe(1);
    const done = (real.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    expect(done.plan).toEqual(dryPolicy.plan);
    expect(done.dropped).toHaveLength(4);
    expect(done.bytesFreed).toBeGreaterThan(0);
    expect(await partitions('ret.daily')).toEqual(before.slice(4));
    // Nothing newer than the cut-off went.
    expect((await h.admin.query(`select count(*)::int n from ret.daily`)).rows[0].n).toBe(60);
    expect(done.archives.map((a) => a.rows)).toEqual([10, 10, 10, 10]);

    // One pg_dump for the run: one file, whose manifest lists the four partitions.
    const archive = done.archives[0]!;
    expect(new Set(done.archives.map((a) => a.file))).toEqual(new Set([archive.file]));
    expect(archive.file).toMatch(/\/ret\.daily-\d{8}T\d{9}Z\.dump\.zst$/);
    const manifest = JSON.parse(fs.readFileSync(`${archive.file}.manifest.json`, 'utf8'));
    expect(manifest.sha256).toBe(createHash('sha256').update(fs.readFileSync(archive.file)).digest('hex'));
    expect(manifest).toMatchObject({ version: 2, parent: 'ret.daily', compression: 'zstd' });
    // Each with its bounds, so restore-partition can attach it again exactly where it was.
    expect(manifest.partitions).toEqual(
      [1, 2, 3, 4].map((d) => ({
        partition: `ret.daily_p2026010${d}`,
        rows: 10,
        from: expect.stringMatching(new RegExp(`^'2026-01-0${d}`)),
        to: expect.stringMatching(new RegExp(`^'2026-01-0${d + 1}`)),
      })),
    );
    // It restores (zstd, then pg_restore), into a scratch database where the rows are counted.
    const scratch = `scratch_${h.id}`;
    await h.admin.query(`create database ${scratch}`);
    const scratchUrl = h.dbUrl.replace(/\/[^/]+$/, `/${scratch}`);
    await runProcess(binPath('psql'), ['-XAtq', '-d', scratchUrl, '-c', 'create schema ret']);
    await runPipeline([
      { cmd: 'zstd', args: ['-q', '-d', '-c', archive.file] },
      { cmd: binPath('pg_restore'), args: ['--no-owner', `--dbname=${scratchUrl}`] },
    ]);
    const { stdout } = await runProcess(binPath('psql'), [
      '-XAtq',
      '-d',
      scratchUrl,
      '-c',
      'select count(*) from ret.daily_p20260104',
    ]);
    expect(Number(stdout.trim())).toBe(10);

    // A second run has nothing left to do.
    const again = await run({ tables: ['ret.daily'], now: '2026-01-10T12:00:00Z' });
    expect((again.job.returnvalue as DropExpiredPartitionsResult).policies[0]!.plan).toEqual([]);
  });

  it('never drops the newest partition, even when everything is past the cut-off', async () => {
    const { job } = await run({ tables: ['ret.daily'], dryRun: true, now: '2027-01-01T00:00:00Z' });
    const drops = (job.returnvalue as DropExpiredPartitionsResult).policies[0]!.plan.filter(
      (s) => s.action === 'drop',
    ).map((s) => s.partition);
    expect(drops).not.toContain('ret.daily_p20260110');
    expect(drops).toHaveLength(5);
  });

  it('an archive that lacks a partition is refused: every partition of the run goes back with its rows', async () => {
    // A pg_dump that leaves out one table's data: the read-back must notice before anything is dropped.
    const bin = pgDumpReplacedBy('gap-bin', `exec "${binPath('pg_dump')}" "$@" --exclude-table-data=ret.gap_p20260102`);
    const before = await partitions('ret.gap');
    process.env.PG_BINDIR = bin;
    const { state, job } = await run({ tables: ['ret.gap'], now: '2026-01-04T00:00:00Z' }).finally(
      () => delete process.env.PG_BINDIR,
    );
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(/archive of ret\.gap_p20260102 has no TABLE DATA entry; not dropped/);
    expect(await partitions('ret.gap')).toEqual(before);
    expect((await h.admin.query(`select count(*)::int n from ret.gap`)).rows[0].n).toBe(30);
    const { rows } = await h.admin.query(
      `select partition_name, state from pgmaint.retention_journal where parent = 'ret.gap' order by 1`,
    );
    expect(rows).toEqual([
      { partition_name: 'gap_p20260101', state: 'reattached' },
      { partition_name: 'gap_p20260102', state: 'reattached' },
    ]);
    const left = fs.readdirSync(path.join(h.backupDir, 'partitions', 'main')).filter((f) => f.startsWith('ret.gap-'));
    expect(left).toEqual([]);
  });

  it('finishes a partition an earlier version archived (one .dump a partition, manifest version 1)', async () => {
    // What a run of the earlier version left when killed before its DROP.
    await h.admin.query('alter table ret.legacy detach partition ret.legacy_p20260101');
    const dir = path.join(h.backupDir, 'partitions', 'main');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'ret.legacy_p20260101-20260102T000000000Z.dump');
    await runProcess(binPath('pg_dump'), ['-Fc', '-t', 'ret.legacy_p20260101', `--file=${file}`, h.dbUrl]);
    const sha256 = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    fs.writeFileSync(
      `${file}.manifest.json`,
      JSON.stringify({
        kind: 'pgmaint-partition-archive',
        version: 1,
        target: 'main',
        partition: 'ret.legacy_p20260101',
        rows: 10,
        bytes: fs.statSync(file).size,
        sha256,
      }),
    );
    await h.admin.query(
      `insert into pgmaint.retention_journal (parent, partition_schema, partition_name, bound_from, bound_to,
         upper_bound, state, archive_file, archive_sha256, job_id)
       values ('ret.legacy', 'ret', 'legacy_p20260101', '''2026-01-01 00:00:00+00''', '''2026-01-02 00:00:00+00''',
         '2026-01-02 00:00:00+00', 'archived', $1, $2, 'earlier-version')`,
      [file, sha256],
    );
    const { state, job } = await run({ tables: ['ret.legacy'], now: '2026-01-03T00:00:00Z' });
    expect(state, job.failedReason).toBe('completed');
    const done = (job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    expect(done.dropped).toEqual(['ret.legacy_p20260101']);
    expect(done.archives).toMatchObject([{ partition: 'ret.legacy_p20260101', file, rows: 10, sha256 }]);
    const { logs } = await rt.queues.get('drop-expired-partitions').getJobLogs(job.id!);
    expect(logs.join('\n')).toContain('verified earlier archive of ret.legacy_p20260101');
    expect((await h.admin.query(`select to_regclass('ret.legacy_p20260101') as t`)).rows[0].t).toBeNull();
    const { rows } = await h.admin.query(
      `select state from pgmaint.retention_journal where partition_name = 'legacy_p20260101'`,
    );
    expect(rows).toEqual([{ state: 'dropped' }]);
  });

  it('a session lost during the archive: the run reports the archive error, and the next run finishes', async () => {
    // pg_dump ends the job's own session (which holds the parent's lock and would put the
    // partitions back), then fails.
    const bin = pgDumpReplacedBy(
      'cut-bin',
      `"${binPath('psql')}" -X -q -c "select pg_terminate_backend(pid) from pg_stat_activity where ` +
        `application_name = 'pgmaint' and datname = current_database()" >/dev/null\n` +
        `echo "pg_dump: error: simulated failure" >&2\nexit 1`,
    );
    process.env.PG_BINDIR = bin;
    const { state, job } = await run({ tables: ['ret.cut'], now: '2026-01-04T00:00:00Z' }).finally(
      () => delete process.env.PG_BINDIR,
    );
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(/simulated failure/);
    expect(job.failedReason).not.toMatch(/not queryable|connection error/);
    // Detached, with their rows, under their journal entries.
    expect(await partitions('ret.cut')).toEqual(['cut_p20260103']);
    const journal = () =>
      h.admin
        .query(`select partition_name, state from pgmaint.retention_journal where parent = 'ret.cut' order by 1`)
        .then((r) => r.rows);
    expect(await journal()).toEqual([
      { partition_name: 'cut_p20260101', state: 'detached' },
      { partition_name: 'cut_p20260102', state: 'detached' },
    ]);
    expect((await h.admin.query('select count(*)::int n from ret.cut_p20260101')).rows[0].n).toBe(10);

    const again = await run({ tables: ['ret.cut'], now: '2026-01-04T00:00:00Z' });
    expect(again.state).toBe('completed');
    expect((again.job.returnvalue as DropExpiredPartitionsResult).policies[0]!.dropped.sort()).toEqual([
      'ret.cut_p20260101',
      'ret.cut_p20260102',
    ]);
    expect(await journal()).toEqual([
      { partition_name: 'cut_p20260101', state: 'dropped' },
      { partition_name: 'cut_p20260102', state: 'dropped' },
    ]);
  });

  it('an archive that cannot be written leaves the partition attached with its rows', async () => {
    const file = path.join(h.dir, 'backup-dir-is-a-file');
    fs.writeFileSync(file, '');
    const bad = h.runtime({ schedules: [], env: { BACKUP_DIR: file } });
    await rt.close(); // only the bad runtime's worker takes this run
    startWorkers(bad, ['drop-expired-partitions']);
    const { state, job } = await run({ tables: ['ret.fragile'], now: '2026-01-10T00:00:00Z' }, bad);
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(/BACKUP_DIR: cannot create/);
    expect(await partitions('ret.fragile')).toContain('ret_fragile_p20260101'.replace('ret_', ''));
    expect((await h.admin.query(`select count(*)::int n from ret.fragile`)).rows[0].n).toBe(30);
    rt = bad;
  });

  it('finalizes a detach left pending by an interrupted run', async () => {
    // A reader keeps a snapshot open, so DETACH CONCURRENTLY waits in its second phase;
    // cancelling it leaves it pending.
    const reader = await h.admin.connect();
    const detacher = await h.admin.connect();
    try {
      await reader.query('begin isolation level repeatable read');
      await reader.query('select count(*) from ret.pending');
      const pid = (await detacher.query('select pg_backend_pid() as p')).rows[0].p;
      const detach = detacher
        .query('alter table ret.pending detach partition ret.pending_p20260101 concurrently')
        .catch((e) => e);
      await waitUntil(
        async () =>
          (
            await h.admin.query(
              `select inhdetachpending as p from pg_inherits where inhrelid = 'ret.pending_p20260101'::regclass`,
            )
          ).rows[0]?.p === true,
        10_000,
        'detach to become pending',
      );
      await h.admin.query('select pg_cancel_backend($1)', [pid]);
      expect(String(await detach)).toMatch(/cancel/);
    } finally {
      await reader.query('rollback');
      reader.release();
      detacher.release();
    }
    const { state, job } = await waitForFinished(
      rt.queues.get('drop-expired-partitions'),
      (await rt.queues.enqueue('drop-expired-partitions', { tables: ['ret.pending'], now: '2026-01-03T12:00:00Z' })).job
        .id!,
    );
    expect(state, job.failedReason).toBe('failed'); // BACKUP_DIR of this runtime is unusable: archive fails
    expect((await h.admin.query(`select count(*)::int n from pg_inherits where inhdetachpending`)).rows[0].n).toBe(0);
  });
});
