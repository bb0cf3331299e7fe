// What a manifest, a bucket's object, a journal row or `pgbackrest info` says is data,
// never a path or a name to trust. A manifest in the bucket whose file climbs out of
// BACKUP_DIR, one that borrows another dump's object, a local one whose dump is a
// symlink out, a journal row naming an archive elsewhere, a pgBackRest set with a bad
// label: each is refused by name (the API's `refused`, the job's log) and never acted on.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import type { BackupResult } from '../../jobs/backup.ts';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import type { PruneBackupsResult } from '../../jobs/prune-backups.ts';
import { dumpDir, type ListedDump, listDumps } from '../../src/backup/catalog.ts';
import { type ObjectStore, objectStoreFor } from '../../src/backup/object-store.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { ensureJournal } from '../../src/partitions/retention-journal.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, VIEWER_TOKEN, waitForFinished } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let s3: S3Server;
let store: ObjectStore;
let env: Record<string, string>;
let real: ListedDump;
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const viewer = { Authorization: `Bearer ${VIEWER_TOKEN}` };
const oneAttempt = { attempts: 1 };

function config(extra: object = {}) {
  return {
    objectStore: {
      bucket: s3.bucket,
      prefix: 'pgm/',
      endpoint: s3.endpoint,
      forcePathStyle: true,
      caFile: s3.caFile,
      accessKeyIdEnv: 'TEST_S3_KEY',
      secretAccessKeyEnv: 'TEST_S3_SECRET',
    },
    backups: {
      dumps: { keepLast: 1, maxAgeDays: 0.0001 },
      base: { keepLast: 1, maxAgeDays: 0.0001 },
      scratchDir: path.join(h.dir, 'scratch'),
    },
    partitions: [{ table: 'ret.legacy', column: 'ts', interval: 'day', retention: '1 day' }],
    jobs: { 'prune-backups': oneAttempt, 'restore-check': oneAttempt, 'drop-expired-partitions': oneAttempt },
    ...extra,
  };
}

beforeAll(async () => {
  h = await createHarness('untrusted');
  s3 = await startS3(path.join(h.dir, 's3'));
  env = { TEST_S3_KEY: s3.accessKeyId, TEST_S3_SECRET: s3.secretAccessKey };
  h.configFile(config());
  await h.admin.query(`create table herd as select g as id from generate_series(1, 300) g;
    create schema ret;
    create table ret.legacy (ts timestamptz not null, v int) partition by range (ts);
    create table ret.legacy_p20260101 partition of ret.legacy
      for values from ('2026-01-01 00:00+00') to ('2026-01-02 00:00+00');
    create table ret.legacy_p20260102 partition of ret.legacy
      for values from ('2026-01-02 00:00+00') to ('2026-01-03 00:00+00');
    insert into ret.legacy select '2026-01-01 06:00+00'::timestamptz + make_interval(mins => g), g
      from generate_series(1, 10) g`);
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
  store = objectStoreFor(rt.config)!;
  startWorkers(rt, ['backup', 'prune-backups', 'restore-check', 'drop-expired-partitions']);
  const b = await run('backup', {});
  expect(b.state, b.job.failedReason).toBe('completed');
  const result = b.job.returnvalue as BackupResult;
  assert(!('skipped' in result), 'the backup skipped');
  const file = result.file;
  real = { path: file, manifest: JSON.parse(fs.readFileSync(`${file}.manifest.json`, 'utf8')) };
  expect(real.manifest.object?.key).toBe(`pgm/dumps/main/${real.manifest.file}`);
});
afterAll(async () => {
  store?.close();
  await h.close();
  await s3?.stop();
});

async function run(name: string, payload: object, runtime = rt) {
  const { job } = await runtime.queues.enqueue(name, payload);
  return waitForFinished(runtime.queues.get(name), job.id!, 120_000);
}

async function logsOf(name: string, id: string, runtime = rt): Promise<string> {
  return (await runtime.queues.get(name).getJobLogs(id)).logs.join('\n');
}

describe('dump manifests', () => {
  it(
    'a manifest whose file climbs out of BACKUP_DIR, or that borrows another dump’s object, is refused by name: ' +
      'not listed, not pruned',
    async () => {
      const victim = path.join(h.dir, 'victim'); // BACKUP_DIR/dumps/main/../../../victim
      fs.mkdirSync(victim);
      fs.writeFileSync(path.join(victim, 'precious.txt'), 'keep me');
      const dir = dumpDir(h.backupDir, 'main');
      const climbing = 'pgm/dumps/main/main-20200101T000000000Z.dump.manifest.json';
      await store.putJson(climbing, { ...real.manifest, file: '../../../victim', finishedAt: '2020-01-01T00:00:01Z' });
      // A name of its own, but the real dump's object: pruning it would delete that object.
      const borrowing = 'pgm/dumps/main/main-20200102T000000000Z.dump.manifest.json';
      await store.putJson(borrowing, {
        ...real.manifest,
        file: 'main-20200102T000000000Z.dump',
        finishedAt: '2020-01-02T00:00:01Z',
      });
      const localClimbing = path.join(dir, 'main-20200103T000000000Z.dump.manifest.json');
      fs.writeFileSync(
        localClimbing,
        JSON.stringify({
          ...real.manifest,
          object: undefined,
          file: '../../../victim',
          finishedAt: '2020-01-03T00:00:01Z',
        }),
      );
      // A dump that is a symlink out of the directory.
      const linked = 'main-20200104T000000000Z.dump';
      fs.symlinkSync(path.join(victim, 'precious.txt'), path.join(dir, linked));
      fs.writeFileSync(
        path.join(dir, `${linked}.manifest.json`),
        JSON.stringify({ ...real.manifest, object: undefined, file: linked, finishedAt: '2020-01-04T00:00:01Z' }),
      );

      const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
      const listed = await request(app).get('/api/backups').set(admin).expect(200);
      expect(listed.body.dumps.map((d: { file: string }) => d.file)).toEqual([real.manifest.file]);
      const refused = [
        {
          object: `s3://${s3.bucket}/${climbing}`,
          reason: expect.stringMatching(/^file "\.\.\/\.\.\/\.\.\/victim": must be a dump file name/),
        },
        {
          object: `s3://${s3.bucket}/${borrowing}`,
          reason: `object.key "${real.manifest.object!.key}": must be "pgm/dumps/main/main-20200102T000000000Z.dump"`,
        },
        { object: localClimbing, reason: expect.stringMatching(/^file "\.\.\/\.\.\/\.\.\/victim": must be a dump/) },
        {
          object: path.join(dir, `${linked}.manifest.json`),
          reason: expect.stringMatching(/leads through a symlink to .*victim\/precious\.txt, not inside/),
        },
      ];
      expect(listed.body.refused).toEqual(expect.arrayContaining(refused));
      expect(listed.body.refused).toHaveLength(4);

      const prune = await run('prune-backups', {});
      expect(prune.state, prune.job.failedReason).toBe('completed');
      expect(fs.readFileSync(path.join(victim, 'precious.txt'), 'utf8')).toBe('keep me');
      expect(fs.lstatSync(path.join(dir, linked)).isSymbolicLink()).toBe(true);
      // The real dump's object, and the refused manifests themselves, are all still there.
      expect((await store.sha256Of(real.manifest.object!.key)).sha256).toBe(real.manifest.object!.sha256);
      expect(await store.list('pgm/dumps/main/')).toEqual(expect.arrayContaining([climbing, borrowing]));
      const logs = await logsOf('prune-backups', prune.job.id!);
      expect(logs).toContain(`refused s3://${s3.bucket}/${climbing}: file "../../../victim": must be a dump file name`);
      expect(logs).not.toMatch(/remove \.\.\/|remove main-2020/);
      const plan = (prune.job.returnvalue as PruneBackupsResult).plan;
      expect(plan.dumps).toEqual([expect.objectContaining({ file: real.manifest.file, action: 'keep' })]);
      expect(plan.refused).toEqual(expect.arrayContaining(refused));
    },
  );

  it('restore-check takes the newest trusted dump, never a refused one, and writes no verdict outside', async () => {
    // Newer than every real dump, with the real object and checksums: only its file climbs out.
    const climbing = 'pgm/dumps/main/main-20990101T000000000Z.dump.manifest.json';
    await store.putJson(climbing, { ...real.manifest, file: '../../../victim2', finishedAt: '2099-01-01T00:00:00Z' });
    const check = await run('restore-check', {});
    expect(check.state, check.job.failedReason).toBe('completed');
    expect(check.job.returnvalue).toMatchObject({ dump: real.manifest.file });
    expect(fs.existsSync(path.join(h.dir, 'victim2.restore-check.json'))).toBe(false);
    expect(fs.existsSync(`${real.path}.restore-check.json`)).toBe(true);
    expect(await logsOf('restore-check', check.job.id!)).toContain(
      `refused s3://${s3.bucket}/${climbing}: file "../../../victim2": must be a dump file name`,
    );
    // A name in a request passes the same validator.
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const res = await request(app)
      .post('/api/jobs/restore-check')
      .set(admin)
      .send({ dump: '../../../victim2' })
      .expect(400);
    expect(res.body.issues).toEqual([{ path: 'dump', message: expect.stringMatching(/must be a dump file name/) }]);
  });
});

describe('what a manifest is read from', () => {
  it(
    'a bucket manifest that disagrees with the local manifest of the same dump is refused by name; the local one ' +
      'counts, and decides what prune does with the local file',
    async () => {
      const dir = dumpDir(h.backupDir, 'main');
      const name = 'main-20991201T000000000Z.dump';
      const object = { ...real.manifest.object!, key: `pgm/dumps/main/${name}` };
      const local = { ...real.manifest, file: name, finishedAt: '2099-12-01T00:00:00.000Z', object };
      fs.copyFileSync(real.path, path.join(dir, name));
      fs.writeFileSync(path.join(dir, `${name}.manifest.json`), JSON.stringify(local));
      // Back-dated, with another sha256: trusted, it would get prune to delete the local dump.
      const key = `pgm/dumps/main/${name}.manifest.json`;
      await store.putJson(key, { ...local, finishedAt: '2000-01-01T00:00:00.000Z', sha256: 'f'.repeat(64) });
      try {
        const { dumps, refused } = await listDumps(h.backupDir, 'main', store);
        const listed = dumps.find((d) => d.manifest.file === name);
        expect(listed?.path).toBe(path.join(dir, name));
        expect(listed?.manifest).toMatchObject({ finishedAt: local.finishedAt, sha256: real.manifest.sha256 });
        expect(refused).toContainEqual({
          object: `s3://${s3.bucket}/${key}`,
          reason:
            `disagrees with the local manifest ${path.join(dir, name)}.manifest.json (finishedAt, sha256); ` +
            'the local one counts',
        });
        // keepLast 1: the newest is kept, so the local dump (2099) stays whatever the bucket says.
        const prune = await run('prune-backups', { dryRun: true });
        expect(prune.state, prune.job.failedReason).toBe('completed');
        const plan = (prune.job.returnvalue as PruneBackupsResult).plan;
        expect(plan.dumps.find((d) => d.file === name)).toMatchObject({
          finishedAt: local.finishedAt,
          action: 'keep',
        });
      } finally {
        await store.remove(key);
        for (const f of [name, `${name}.manifest.json`]) fs.rmSync(path.join(dir, f));
      }
    },
  );

  it('a bucket manifest over 1 MiB is refused by name, not loaded', async () => {
    const name = 'main-20200106T000000000Z.dump';
    const key = `pgm/dumps/main/${name}.manifest.json`;
    // Valid in every field: only its size gives it away.
    const object = { ...real.manifest.object!, key: `pgm/dumps/main/${name}` };
    await store.putJson(key, { ...real.manifest, file: name, object, padding: 'x'.repeat(1024 * 1024) });
    try {
      const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
      const listed = await request(app).get('/api/backups').set(admin).expect(200);
      expect(listed.body.dumps.map((d: { file: string }) => d.file)).not.toContain(name);
      expect(listed.body.refused).toContainEqual({
        object: `s3://${s3.bucket}/${key}`,
        reason: expect.stringMatching(
          /^\d+ bytes: larger than the 1048576 bytes \(1 MiB\) a manifest or verdict may have; not read$/,
        ),
      });
    } finally {
      await store.remove(key);
    }
  });

  it('a local manifest or verdict that is a symlink is refused unread; no refusal quotes a file', async () => {
    const dir = dumpDir(h.backupDir, 'main');
    const secret = path.join(h.dir, 'secret.txt'); // outside BACKUP_DIR
    fs.writeFileSync(secret, 'TOPSECRET-line1\nTOPSECRET-line2\n');
    const linked = path.join(dir, 'main-20200105T000000000Z.dump.manifest.json');
    fs.symlinkSync(secret, linked);
    const verdict = `${real.path}.restore-check.json`;
    const verdictBefore = fs.readFileSync(verdict);
    fs.rmSync(verdict);
    fs.symlinkSync(secret, verdict);
    // Not JSON, in place: the reason says so, without a word of the file.
    const garbled = path.join(dir, 'main-20200107T000000000Z.dump.manifest.json');
    fs.writeFileSync(garbled, 'TOPSECRET-line1\n');
    try {
      const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
      const listed = await request(app).get('/api/backups').set(viewer).expect(200);
      expect(listed.text).not.toContain('TOPSECRET');
      const symlink = 'a symlink: a manifest or verdict is never read through one';
      expect(listed.body.refused).toEqual(
        expect.arrayContaining([
          { object: linked, reason: symlink },
          { object: verdict, reason: symlink },
          { object: garbled, reason: expect.stringMatching(/^not JSON( \(at position \d+\))?$/) },
        ]),
      );
      // The dump itself still counts.
      expect(listed.body.dumps.map((d: { file: string }) => d.file)).toContain(real.manifest.file);
    } finally {
      fs.rmSync(linked);
      fs.rmSync(garbled);
      fs.rmSync(verdict);
      fs.writeFileSync(verdict, verdictBefore);
    }
  });
});

describe('partition archives', () => {
  it(
    'a journal row naming an archive outside BACKUP_DIR is refused; ' + 'the partition is archived again inside',
    async () => {
      // What an earlier run would have left (archived, not yet dropped), but the file lies elsewhere.
      await ensureJournal(h.admin);
      await h.admin.query('alter table ret.legacy detach partition ret.legacy_p20260101');
      const outside = path.join(h.dir, 'outside', 'ret.legacy_p20260101-20260102T000000000Z.dump');
      fs.mkdirSync(path.dirname(outside));
      await runProcess(binPath('pg_dump'), ['-Fc', '-t', 'ret.legacy_p20260101', `--file=${outside}`, h.dbUrl]);
      const sha256 = createHash('sha256').update(fs.readFileSync(outside)).digest('hex');
      const manifest = { kind: 'pgmaint-partition-archive', version: 1, partition: 'ret.legacy_p20260101', rows: 10 };
      fs.writeFileSync(
        `${outside}.manifest.json`,
        JSON.stringify({ ...manifest, target: 'main', bytes: fs.statSync(outside).size, sha256 }),
      );
      await h.admin.query(
        `insert into pgmaint.retention_journal (parent, partition_schema, partition_name, bound_from, bound_to,
         upper_bound, state, archive_file, archive_sha256, job_id)
       values ('ret.legacy', 'ret', 'legacy_p20260101', '''2026-01-01 00:00:00+00''', '''2026-01-02 00:00:00+00''',
         '2026-01-02 00:00:00+00', 'archived', $1, $2, 'elsewhere')`,
        [outside, sha256],
      );
      const r = await run('drop-expired-partitions', { tables: ['ret.legacy'], now: '2026-01-03T00:00:00Z' });
      expect(r.state, r.job.failedReason).toBe('completed');
      const done = (r.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
      expect(done.dropped).toEqual(['ret.legacy_p20260101']);
      expect(done.archives).toEqual([expect.objectContaining({ partition: 'ret.legacy_p20260101', rows: 10 })]);
      expect(done.archives[0]!.file.startsWith(path.join(h.backupDir, 'partitions', 'main') + path.sep)).toBe(true);
      expect(await logsOf('drop-expired-partitions', r.job.id!)).toContain(
        `refused archive ${outside} (retention journal): must be a partition archive in ` +
          path.join(h.backupDir, 'partitions', 'main'),
      );
    },
  );
});

describe('the pgBackRest catalog', () => {
  it(
    'a set whose label fails its check is refused by name, ' + 'and prune expires nothing while one is listed',
    async () => {
      await rt.close();
      // pgbackrest's answer, as a script on PATH: three full sets, the oldest with a label that is no label.
      const bin = path.join(h.dir, 'fake-pgbackrest');
      fs.mkdirSync(bin, { mode: 0o755 });
      fs.chmodSync(h.dir, 0o755);
      const calls = path.join(bin, 'calls.log');
      fs.writeFileSync(calls, '', { mode: 0o666 });
      fs.chmodSync(calls, 0o666);
      const set = (label: string, day: number) => ({
        label,
        type: 'full',
        prior: null,
        archive: { start: '000000010000000000000002', stop: '000000010000000000000002' },
        lsn: { start: '0/2000028', stop: '0/2000100' },
        timestamp: { start: Date.UTC(2020, 0, day) / 1000, stop: Date.UTC(2020, 0, day) / 1000 + 60 },
        info: { size: 1000, delta: 1000, repository: { size: 100, delta: 100 } },
      });
      const info = [
        {
          name: 'fake',
          status: { code: 0, message: 'ok' },
          cipher: 'none',
          db: [{ 'system-id': 1 }],
          archive: [{ min: '000000010000000000000001', max: '000000010000000000000009' }],
          backup: [set('../../repo --delete', 1), set('20200102-000000F', 2), set('20200103-000000F', 3)],
        },
      ];
      fs.writeFileSync(path.join(bin, 'info.json'), JSON.stringify(info));
      fs.writeFileSync(
        path.join(bin, 'pgbackrest'),
        `#!/bin/sh\necho "$*" >> "${calls}"\ncase " $* " in *" info "*) cat "${bin}/info.json" ;; esac\n`,
        { mode: 0o755 },
      );
      h.configFile(config({ targets: { main: { backup: { engine: 'pgbackrest', stanza: 'fake' } } } }));
      const path0 = process.env.PATH;
      process.env.PATH = `${bin}:${path0}`;
      try {
        const withFake = h.runtime({ schedules: [], env });
        startWorkers(withFake, ['prune-backups']);
        const app = createApp(withFake, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
        const listed = await request(app).get('/api/backups').set(admin).expect(200);
        expect(listed.body.pgbackrest.sets.map((s: { label: string }) => s.label)).toEqual([
          '20200103-000000F',
          '20200102-000000F',
        ]);
        const refusal = {
          object: 'pgbackrest info (stanza fake): set "../../repo --delete"',
          reason: expect.stringMatching(/^label: must be a pgBackRest set label/),
        };
        expect(listed.body.refused).toEqual(expect.arrayContaining([refusal]));
        const prune = await run('prune-backups', {}, withFake);
        expect(prune.state, prune.job.failedReason).toBe('completed');
        expect(fs.readFileSync(calls, 'utf8')).not.toMatch(/expire/);
        expect(await logsOf('prune-backups', prune.job.id!, withFake)).toContain(
          'refused pgbackrest info (stanza fake): set "../../repo --delete": label: must be a pgBackRest set label',
        );
        const plan = (prune.job.returnvalue as { plan: { backupSets: { action: string }[]; refused: unknown[] } }).plan;
        expect(plan.backupSets.map((s) => s.action)).toEqual(['keep', 'keep']);
        expect(plan.refused).toEqual(expect.arrayContaining([refusal]));
      } finally {
        process.env.PATH = path0;
      }
    },
  );
});
