// restore-dump and the restorable listing, on real parts: dumps restored into a new
// database from local storage and from an S3 bucket (s3rver over TLS, encrypted, the
// bucket the only copy), row counts equal the source's; refusals name the field (HTTP
// 400, CLI exit 2); a failed or killed restore leaves no database under the name asked for.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { bucketConfig, bucketCredentials } from '../support/bucket.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  type Harness,
  VIEWER_TOKEN,
  waitForFinished,
  waitUntil,
} from '../support/harness.ts';
import { holdableTool } from '../support/holds.ts';

let h: Harness;
let rt: Runtime;
let s3: S3Server;
const key = randomBytes(32).toString('base64');
let env: Record<string, string>;
const TABLES = ['app.herd', 'app.milk', 'ops.notes'];
let source: Record<string, number>;

const local = { backups: {}, worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 } };
const bucket = () => ({
  ...local,
  objectStore: bucketConfig(s3),
  encryption: { keyId: 'k2026', keyEnv: 'TEST_BACKUP_KEY' },
  backups: { scratchDir: path.join(h.dir, 'scratch') },
});

/** A runtime with workers on the config file as it is now. */
async function useConfig(content: object) {
  await rt?.close();
  h.configFile(content);
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
  startWorkers(rt, ['backup', 'restore-dump']);
}

async function run(name: string, payload: object) {
  const { job } = await rt.queues.enqueue(name, payload);
  return waitForFinished(rt.queues.get(name), job.id!, 120_000);
}

const dbUrl = (db: string) => {
  const u = new URL(h.dbUrl);
  u.pathname = `/${db}`;
  return u.toString();
};

async function counts(db: string, tables = TABLES): Promise<Record<string, number>> {
  const c = new pg.Client({ connectionString: dbUrl(db) });
  await c.connect();
  try {
    const out: Record<string, number> = {};
    for (const t of tables) out[t] = Number((await c.query(`select count(*) n from ${t}`)).rows[0].n);
    return out;
  } finally {
    await c.end();
  }
}

async function databases(pattern: string): Promise<string[]> {
  const { rows } = await h.admin.query('select datname from pg_database where datname like $1 order by 1', [pattern]);
  return rows.map((r) => r.datname);
}

beforeAll(async () => {
  h = await createHarness('restore_dump');
  s3 = await startS3(path.join(h.dir, 's3'));
  env = { ...bucketCredentials(s3), TEST_BACKUP_KEY: key };
  await h.admin.query(`create schema app; create schema ops;
    create table app.herd (id int primary key, name text);
    insert into app.herd select g, 'cow ' || g from generate_series(1, 3000) g;
    create table app.milk (cow int references app.herd, litres numeric);
    insert into app.milk select 1 + g % 3000, g / 7.0 from generate_series(1, 9000) g;
    create table ops.notes as select g as id, md5(g::text) as note from generate_series(1, 500) g`);
  source = await counts(new URL(h.dbUrl).pathname.slice(1));
  await useConfig(local);
});
afterAll(async () => {
  await rt?.close();
  await h.close();
  await s3?.stop();
});

describe('restore-dump from local storage', () => {
  it('restores the latest dump into a new database; the row counts equal the source', async () => {
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    const r = await run('restore-dump', { database: 'herd_local', parallel: 3 });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue).toMatchObject({ database: 'herd_local', replaced: false });
    expect(r.job.returnvalue.source).toMatch(/^\/.*\.dump$/);
    expect(await counts('herd_local')).toEqual(source);
    expect(await databases('pgmaint_restoring_%')).toEqual([]);
  }, 180_000);

  it('refusals name what is wrong: the live database (HTTP 400), an unknown label, a time before every dump, ' +
    'a database that is not empty (CLI exit 2)', async () => {
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const live = new URL(h.dbUrl).pathname.slice(1);
    const res = await request(app)
      .post('/api/jobs/restore-dump')
      .set({ Authorization: `Bearer ${ADMIN_TOKEN}` })
      .send({ database: live })
      .expect(400);
    expect(JSON.stringify(res.body)).toMatch(/database.*is the live database of target \\?"main\\?"/);
    const both = await request(app)
      .post('/api/jobs/restore-dump')
      .set({ Authorization: `Bearer ${ADMIN_TOKEN}` })
      .send({ database: 'x', dump: 'main-20200101T000000000Z.dump', before: '2020-01-01T00:00:00Z' })
      .expect(400);
    expect(JSON.stringify(both.body)).toContain('before');
    const cli = async (data: object) => {
      const p = h.spawnPgmaint(['enqueue', 'restore-dump', '--data', JSON.stringify(data), '--wait'], env);
      return { code: await p.exited, out: p.output() };
    };
    const unknown = await cli({ database: 'nope', dump: 'main-20200101T000000000Z.dump' });
    expect(unknown.code, unknown.out).toBe(2);
    expect(unknown.out).toContain('REFUSED: dump: no verified dump main-20200101T000000000Z.dump of target');
    const early = await cli({ database: 'nope', before: '2020-01-01T00:00:00Z' });
    expect(early.code, early.out).toBe(2);
    expect(early.out).toMatch(/REFUSED: before: no verified dump of target \\?"main\\?" finished before 2020-01-01/);
    const busy = await cli({ database: 'herd_local' });
    expect(busy.code, busy.out).toBe(2);
    expect(busy.out).toMatch(
      /REFUSED: database: \\?"herd_local\\?" exists and is not empty \(\d+ tables\); give clean/,
    );
    expect(await databases('nope')).toEqual([]);
  }, 180_000);

  it('clean replaces a database that is not empty, only once the restore is checked; --wait from the CLI', async () => {
    const c = new pg.Client({ connectionString: dbUrl('herd_local') });
    await c.connect();
    await c.query('delete from app.milk; create table app.extra (x int)');
    await c.end();
    const p = h.spawnPgmaint(
      ['enqueue', 'restore-dump', '--data', JSON.stringify({ database: 'herd_local', clean: true }), '--wait'],
      env,
    );
    expect(await p.exited, p.output()).toBe(0);
    expect(p.output()).toMatch(/"replaced": true/);
    expect(await counts('herd_local')).toEqual(source);
    const tables = await new pg.Client({ connectionString: dbUrl('herd_local') });
    await tables.connect();
    expect((await tables.query(`select to_regclass('app.extra') is null as gone`)).rows[0].gone).toBe(true);
    await tables.end();
  }, 180_000);

  it('tables into an existing database only with intoExisting, in one transaction', async () => {
    await h.admin.query('create database partial_target');
    const c = new pg.Client({ connectionString: dbUrl('partial_target') });
    await c.connect();
    await c.query('create schema ops; create table ops.keep (x int); insert into ops.keep values (1)');
    const r = await run('restore-dump', { database: 'partial_target', tables: ['ops.notes'], intoExisting: true });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(await counts('partial_target', ['ops.notes', 'ops.keep'])).toEqual({ 'ops.notes': 500, 'ops.keep': 1 });
    expect((await c.query(`select to_regclass('app.herd') is null as absent`)).rows[0].absent).toBe(true);
    // Again: the table exists now, so pg_restore fails, and the one transaction leaves the database as it was.
    const again = await run('restore-dump', { database: 'partial_target', tables: ['ops.notes'], intoExisting: true });
    expect(again.state).toBe('failed');
    expect(again.job.failedReason).toMatch(/^RESTORE_FAILED: pg_restore into partial_target failed/);
    expect(await counts('partial_target', ['ops.notes', 'ops.keep'])).toEqual({ 'ops.notes': 500, 'ops.keep': 1 });
    await c.end();
  }, 180_000);

  it('a restore killed during pg_restore leaves no database under the name asked; the retry finishes it', async () => {
    // pg_restore waits once it has restored everything, before the job can check or rename.
    const { bin: faultBin, faults } = holdableTool(h.dir, 'pg_restore');
    fs.writeFileSync(path.join(faults, 'hold-after'), '');
    const reached = path.join(faults, 'reached');
    await rt.close();
    h.configFile(local);
    rt = h.runtime({ schedules: [], env });
    const doomed = h.spawnPgmaint(['worker', '--queues', 'restore-dump'], { ...env, PG_BINDIR: faultBin });
    await doomed.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('restore-dump', { database: 'herd_killed' });
    await waitUntil(async () => fs.existsSync(reached), 60_000, 'pg_restore to have restored everything');
    await doomed.killGroup();
    // Everything is restored, but not checked nor renamed: nothing is presented as done.
    expect(await databases('herd_killed')).toEqual([]);
    expect((await databases('pgmaint_restoring_%')).length).toBe(1);
    const rescuer = h.spawnPgmaint(['worker', '--queues', 'restore-dump'], env);
    await rescuer.waitFor(/worker started/);
    const done = await waitForFinished(rt.queues.get('restore-dump'), job.id!, 120_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect(await counts('herd_killed')).toEqual(source);
    expect(await databases('pgmaint_restoring_%')).toEqual([]);
    await rescuer.killGroup();
    await useConfig(local);
  }, 240_000);
});

describe('restore-dump from the bucket, encrypted (the only copy)', () => {
  it('restores the dump from s3, decrypting it; the row counts equal the source; backups lists it', async () => {
    await useConfig(bucket());
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const listed = await request(app)
      .get('/api/backups')
      .set({ Authorization: `Bearer ${VIEWER_TOKEN}` })
      .expect(200);
    const newest = listed.body.dumps[0];
    expect(newest).toMatchObject({ location: 'bucket', encrypted: true });
    expect(newest.where).toEqual([expect.stringMatching(/^s3:\/\/pgmaint\/pgmaint\/dumps\/main\/.*\.dump\.enc$/)]);
    // The local dumps taken before encryption was configured have manifests without a MAC: with a key
    // configured they are refused, by name, not listed (docs/backups.md, "Manifests written before this").
    expect(listed.body.dumps.some((d: { location: string }) => d.location === 'local')).toBe(false);
    expect(listed.body.refused).toContainEqual({
      object: expect.stringMatching(/\/dumps\/main\/main-\S+\.dump\.manifest\.json$/),
      reason: expect.stringMatching(/^no MAC: with encryption configured/),
    });
    // The CLI's table says where each lies; --json prints the API's answer.
    const table = h.spawnPgmaint(['backups'], env);
    expect(await table.exited, table.output()).toBe(0);
    expect(table.output()).toContain(newest.where[0]);
    expect(table.output()).toMatch(/Partition archives\n(none|PARENT)/);
    const json = h.spawnPgmaint(['backups', '--json'], env);
    expect(await json.exited, json.output()).toBe(0);
    expect(json.output()).toContain(`"location": "bucket"`);
    const r = await run('restore-dump', { database: 'herd_s3', dump: newest.file });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue.source).toBe(newest.where[0]);
    expect(await counts('herd_s3')).toEqual(source);
    // The downloaded copy is gone.
    expect(fs.readdirSync(path.join(h.dir, 'scratch')).filter((f) => f.startsWith('.pgmaint-restore'))).toEqual([]);
    const { logs } = await rt.queues.get('restore-dump').getJobLogs(r.job.id!);
    expect(logs.join('\n')).toContain('decrypting as it streams');
    expect(logs.join('\n')).toContain('sha256 matches its manifest');
  }, 180_000);

  it('a damaged object is refused before pg_restore, naming the object; no database is made', async () => {
    const [dump] = (
      await request(createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN)))
        .get('/api/backups')
        .set({ Authorization: `Bearer ${VIEWER_TOKEN}` })
    ).body.dumps;
    const objectKey = dump.where[0].replace('s3://pgmaint/', '');
    const base = path.join(h.dir, 's3', 'data', s3.bucket, objectKey);
    const file = fs.existsSync(`${base}._S3rver_object`) ? `${base}._S3rver_object` : base;
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 30]! ^= 0x01;
    fs.writeFileSync(file, bytes);
    const r = await run('restore-dump', { database: 'herd_damaged', dump: dump.file });
    expect(r.state).toBe('failed');
    expect(r.job.failedReason).toContain(`DUMP_DAMAGED: dump ${dump.file}: ${dump.where[0]}`);
    expect(await databases('herd_damaged')).toEqual([]);
    expect(await databases('pgmaint_restoring_%')).toEqual([]);
  }, 180_000);
});
