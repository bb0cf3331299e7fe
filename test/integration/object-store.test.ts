// Logical dumps and partition archives in an S3 bucket (s3rver over TLS), encrypted
// with AES-256-GCM: uploaded only after local verification, read back and checked
// before they count, restored from the bucket by restore-check. A wrong key, a flipped
// byte or a deleted object fails the check, naming the object.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import type { BackupResult } from '../../jobs/backup.ts';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import { dumpDir, listDumps } from '../../src/backup/catalog.ts';
import { readBackupCatalog } from '../../src/backup/target-catalog.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { objectStoreFor } from '../../src/backup/object-store.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  type Harness,
  type Spawned,
  VIEWER_TOKEN,
  waitForFinished,
} from '../support/harness.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { bucketConfig, bucketCredentials } from '../support/bucket.ts';

let h: Harness;
let rt: Runtime;
let s3: S3Server;
const key = randomBytes(32).toString('base64');
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
let env: Record<string, string>;
/** Worker processes, whose output the credential search reads. */
const workers: Spawned[] = [];

beforeAll(async () => {
  h = await createHarness('object_store');
  s3 = await startS3(path.join(h.dir, 's3'));
  env = { ...bucketCredentials(s3), TEST_BACKUP_KEY: key };
  h.configFile({
    objectStore: bucketConfig(s3),
    encryption: { keyId: 'k2026', keyEnv: 'TEST_BACKUP_KEY' },
    partitions: [{ table: 'app.events', column: 'ts', interval: 'day', retention: '1 day' }],
    backups: { scratchDir: path.join(h.dir, 'scratch') },
  });
  await h.admin.query(`create schema app;
    create table app.herd as select g as id, 'cow ' || g as name from generate_series(1, 2000) g;
    create table app.events (ts timestamptz not null, v int) partition by range (ts);
    create table app.events_p20260101 partition of app.events
      for values from ('2026-01-01 00:00+00') to ('2026-01-02 00:00+00');
    create table app.events_p20260102 partition of app.events
      for values from ('2026-01-02 00:00+00') to ('2026-01-03 00:00+00');
    insert into app.events
      select '2026-01-01 06:00+00'::timestamptz + make_interval(mins => g), g from generate_series(1, 50) g`);
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
  startWorkers(rt, ['backup', 'restore-check', 'drop-expired-partitions']);
});
afterAll(async () => {
  await h.close();
  await s3?.stop();
});

async function run(name: string, payload: object, runtime = rt) {
  const { job } = await runtime.queues.enqueue(name, payload);
  return waitForFinished(runtime.queues.get(name), job.id!, 120_000);
}

/** The file s3rver keeps for an object (its on-disk store, to damage or delete it). */
function storedFile(objectKey: string): string {
  const base = path.join(h.dir, 's3', 'data', s3.bucket, objectKey);
  return fs.existsSync(`${base}._S3rver_object`) ? `${base}._S3rver_object` : base;
}

describe('dumps in the object store', () => {
  it('uploads the verified dump encrypted, reads it back, and restore-check restores it from the bucket', async () => {
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    const [dump] = (await listDumps(h.backupDir, 'main', objectStoreFor(rt.config))).dumps;
    const object = dump!.manifest.object!;
    expect(object).toMatchObject({
      bucket: s3.bucket,
      encryption: { algorithm: 'aes-256-gcm-chunked', keyId: 'k2026' },
    });
    expect(object.key).toMatch(/^pgmaint\/dumps\/main\/main-.*\.dump\.enc$/);
    // keepLocal: false — the local file is gone, the manifest remains as the record.
    expect(fs.existsSync(dump!.path)).toBe(false);
    // The result, the run history and Bull Board name where the dump is now: the object, not the deleted file.
    const where = `s3://${s3.bucket}/${object.key}`;
    expect(b.job.returnvalue).toMatchObject({ name: dump!.manifest.file, file: where, object: where });
    await rt.history.flush();
    const [row] = await rt.history.list({ job: 'backup', limit: 1 });
    expect(row!.result).toMatchObject({ file: where });
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const board = await request(app).get(`/admin/queues/api/queues/backup/${b.job.id}`).set(admin).expect(200);
    expect(board.body.job.returnValue.file).toBe(where);
    const logs = await request(app).get(`/admin/queues/api/queues/backup/${b.job.id}/logs`).set(admin).expect(200);
    const lines = logs.body as string[];
    expect(lines.join('\n')).toContain(`local copy removed (objectStore.keepLocal is false): the dump is ${where}`);
    expect(lines.at(-1)).toContain(`[100%] backup verified: ${where}, `);
    expect(lines.filter((l) => l.includes(dump!.path) && !l.includes(`${dump!.path}.manifest.json`))).toEqual([]);
    const stored = fs.readFileSync(storedFile(object.key));
    expect(stored.subarray(0, 8).toString()).toBe('PGMENC2\n');
    expect(stored.includes(Buffer.from('PGDMP'))).toBe(false); // no plaintext custom-format header
    const r = await run('restore-check', {});
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue).toMatchObject({ tablesCompared: expect.any(Number) });
    expect(JSON.stringify(r.job.returnvalue)).not.toContain(key);
  });

  it('a wrong key fails restore-check, naming the object', async () => {
    const other = h.runtime({ schedules: [], env: { ...env, TEST_BACKUP_KEY: randomBytes(32).toString('hex') } });
    await rt.close();
    startWorkers(other, ['restore-check']);
    const r = await run('restore-check', {}, other);
    expect(r.state).toBe('failed');
    // The manifests' MACs are checked first: the dump's manifest is refused, by name, as written under another key.
    expect(r.job.failedReason).toMatch(/refused \S+\/main-\S+\.dump\.manifest\.json: its MAC is by key "k2026", /);
    expect(r.job.failedReason).toContain('and the key configured under that id is another one (a wrong key)');
    // The object itself, read with that key, fails naming the object.
    const good = objectStoreFor(rt.config)!;
    const [dump] = (await listDumps(h.backupDir, 'main', good).finally(() => good.close())).dumps;
    const store = objectStoreFor(other.config)!;
    const tmp = path.join(h.dir, 'wrong-key.dump');
    await expect(store.download(dump!.manifest.object!, tmp).finally(() => store.close())).rejects.toThrow(
      /^s3:\/\/pgmaint\/pgmaint\/dumps\/main\/\S+\.dump\.enc: cannot decrypt: chunk 0 fails authentication/,
    );
    rt = other;
  });

  it('one flipped byte in the stored object fails restore-check; so does a deleted object', async () => {
    const fresh = h.runtime({ schedules: [], env });
    await rt.close();
    startWorkers(fresh, ['backup', 'restore-check', 'drop-expired-partitions']);
    rt = fresh;
    const [dump] = (await listDumps(h.backupDir, 'main', objectStoreFor(rt.config))).dumps;
    const file = storedFile(dump!.manifest.object!.key);
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 40]! ^= 0x01;
    fs.writeFileSync(file, bytes);
    const flipped = await run('restore-check', {});
    expect(flipped.state).toBe('failed');
    expect(flipped.job.failedReason).toMatch(/\.dump\.enc: cannot decrypt: chunk \d+ fails authentication/);
    fs.rmSync(file);
    const gone = await run('restore-check', {});
    expect(gone.state).toBe('failed');
    expect(gone.job.failedReason).toMatch(/s3:\/\/pgmaint\/\S+\.dump\.enc: the object does not exist/);
  });
});

describe('a dump only in the bucket, read where no bucket is configured', () => {
  it('is listed as unavailable, never counted: not in the API, not in the dump age the alert reads', async () => {
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    const result = b.job.returnvalue as BackupResult;
    assert(!('skipped' in result), 'the backup skipped');
    const { name, object } = result;
    // The same BACKUP_DIR and database without objectStore: a plain `pgmaint demo` after an --offsite one.
    const plainFile = path.join(h.dir, 'plain.json');
    fs.writeFileSync(plainFile, JSON.stringify({ redis: { prefix: `{t-${h.id}-plain}` } }));
    const plain = h.runtime({ schedules: [], env: { PGMAINT_CONFIG: plainFile } });
    expect(plain.config.objectStore).toBeUndefined();
    const unavailable = {
      object: path.join(dumpDir(h.backupDir, 'main'), `${name}.manifest.json`),
      reason:
        `unavailable: the dump is only in ${object} (no local file) and no objectStore is configured to read it ` +
        'back; not counted as a backup',
    };
    const catalog = await readBackupCatalog(h.backupDir, plain.config.targets.get('main')!);
    // Every dump of this file lives only in the bucket (keepLocal: false): none counts here.
    expect(catalog.dumps).toEqual([]);
    expect(catalog.refused).toContainEqual(unavailable);
    const res = await request(createApp(plain, new Auth(ADMIN_TOKEN, VIEWER_TOKEN)))
      .get('/api/backups')
      .set(admin)
      .expect(200);
    expect(res.body).toMatchObject({ newestDumpAgeSeconds: null, dumps: [] });
    expect(res.body.refused).toContainEqual(unavailable);
    const reading = await new HealthReader(plain).take();
    expect(reading.backups.find((x) => x.target === 'main')).toMatchObject({ newestDumpAgeSeconds: null });
    // With the bucket configured, the same manifest counts.
    const withBucket = await listDumps(h.backupDir, 'main', objectStoreFor(rt.config));
    expect(withBucket.dumps.map((d) => d.manifest.file)).toContain(name);
  });
});

describe('partition archives in the object store', () => {
  it('an expired partition is archived to the bucket, encrypted and verified, before it is dropped', async () => {
    const r = await run('drop-expired-partitions', { now: '2026-01-05T00:00:00Z' });
    expect(r.state, r.job.failedReason).toBe('completed');
    const archives = (r.job.returnvalue as DropExpiredPartitionsResult).policies[0]!.archives;
    expect(archives[0]).toMatchObject({
      partition: 'app.events_p20260101',
      rows: 50,
      object: { encryption: { keyId: 'k2026' } },
    });
    const stored = archives[0]!.object;
    assert(stored, 'the archive has no object');
    expect(stored.key).toMatch(/^pgmaint\/partitions\/main\/app\.events-\d{8}T\d{9}Z\.dump\.zst\.enc$/);
    // keepLocal: false — the archive is the object; the result and the log name it, not the removed file.
    const where = `s3://${s3.bucket}/${stored.key}`;
    expect(archives[0]).toMatchObject({ file: where, manifest: expect.stringMatching(/\.dump\.zst\.manifest\.json$/) });
    expect(fs.existsSync(archives[0]!.manifest)).toBe(true);
    expect(fs.existsSync(archives[0]!.manifest.replace(/\.manifest\.json$/, ''))).toBe(false);
    const { logs } = await rt.queues.get('drop-expired-partitions').getJobLogs(r.job.id!);
    expect(logs.join('\n')).toContain(`archived app.events_p20260101: 50 rows, in ${where} (`);
    expect(fs.readFileSync(storedFile(stored.key)).subarray(0, 8).toString()).toBe('PGMENC2\n');
    const { rows } = await h.admin.query(`select to_regclass('app.events_p20260101') as t`);
    expect(rows[0].t).toBeNull();
  });
});

describe('workers on two hosts', () => {
  it('a dump taken by one worker is found and restore-checked by another with its own local directory', async () => {
    await rt.close(); // only the two worker processes below take jobs
    const client = h.runtime({ schedules: [], env });
    const a = h.spawnPgmaint(['worker', '--queues', 'backup'], { ...env, BACKUP_DIR: path.join(h.dir, 'host-a') });
    const b = h.spawnPgmaint(['worker', '--queues', 'restore-check'], {
      ...env,
      BACKUP_DIR: path.join(h.dir, 'host-b'),
    });
    await a.waitFor(/worker started/);
    await b.waitFor(/worker started/);
    workers.push(a, b);
    const backup = await run('backup', {}, client);
    expect(backup.state, backup.job.failedReason).toBe('completed');
    const result = backup.job.returnvalue as BackupResult;
    assert(!('skipped' in result), 'the backup skipped');
    const file = result.name;
    expect(fs.existsSync(path.join(h.dir, 'host-b', 'dumps', 'main', `${file}.manifest.json`))).toBe(false);
    const check = await run('restore-check', {}, client);
    expect(check.state, check.job.failedReason).toBe('completed');
    expect(check.job.returnvalue).toMatchObject({ dump: file });
    // The verdict is in the bucket too, where the other host's catalog reads it.
    const store = objectStoreFor(client.config);
    const listed = (await listDumps(path.join(h.dir, 'host-a'), 'main', store)).dumps;
    store?.close();
    expect(listed.find((d) => d.manifest.file === file)!.restoreCheck).toMatchObject({ ok: true });
  });
});

describe('the credentials', () => {
  it('appear in no job data, job log, run history row, Bull Board answer, /metrics, or process output', async () => {
    // Random for this run (src/dev/s3.ts), so a hit is a leak and not a coincidence.
    const secrets = [s3.accessKeyId, s3.secretAccessKey, key];
    expect(s3.accessKeyId).not.toBe('S3RVER');
    const texts: string[] = [];
    const client = h.runtime({ schedules: [], env });
    const queues = ['backup', 'restore-check', 'drop-expired-partitions'];
    const ids: Record<string, string[]> = {};
    for (const name of queues) {
      const queue = client.queues.get(name);
      const jobs = await queue.getJobs(['completed', 'failed']);
      ids[name] = jobs.map((j) => j.id!);
      for (const job of jobs) {
        texts.push(JSON.stringify(job.data), JSON.stringify(job.returnvalue), job.failedReason ?? '');
        texts.push(JSON.stringify(job.stacktrace), ...(await queue.getJobLogs(job.id!)).logs);
      }
    }
    expect(ids.backup!.length).toBeGreaterThan(1);
    await client.history.flush();
    texts.push(JSON.stringify((await h.admin.query('select * from pgmaint.run_history')).rows));
    // A server process, as an operator runs it: Bull Board's answers, /metrics, the backups API.
    const server = h.spawnPgmaint(['server'], env);
    await server.waitFor(/server listening/);
    const port = Number(/"port":(\d+)/.exec(server.output())![1]);
    const get = async (route: string) => {
      const res = await fetch(`http://127.0.0.1:${port}${route}`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(res.status, route).toBe(200);
      return res.text();
    };
    for (const name of queues) {
      for (const status of ['completed', 'failed']) {
        const board = await get(`/admin/queues/api/queues?activeQueue=${name}&status=${status}&page=1&jobsPerPage=100`);
        if (name === 'backup' && status === 'completed') expect(board).toContain('"returnValue"');
        texts.push(board);
      }
      for (const id of ids[name]!) texts.push(await get(`/admin/queues/api/queues/${name}/${id}/logs`));
    }
    const metrics = await get('/metrics');
    expect(metrics).toContain('pgmaint_');
    texts.push(metrics, await get('/api/backups'), await get('/api/status'));
    await server.killGroup();
    texts.push(server.output(), ...workers.map((w) => w.output()));
    expect(workers.map((w) => w.output()).join('')).toMatch(/worker started/);
    for (const secret of secrets) expect(texts.filter((t) => t.includes(secret))).toEqual([]);
  });
});
