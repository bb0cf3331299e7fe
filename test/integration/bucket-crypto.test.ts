// Authenticated manifests and key rotation, on a bucket (s3rver over TLS) and real jobs:
// an edited row count in a dump's manifest (in the bucket and locally) or in a partition
// archive's manifest is refused, by name, before anything believes it; a dump written
// before a key rotation is restored after it; a key dropped from the configuration fails
// naming the object and the key id.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listDumps } from '../../src/backup/catalog.ts';
import { objectStoreFor } from '../../src/backup/object-store.ts';
import { readArchiveManifest } from '../../src/backup/partition-archive.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { bucketConfig, bucketCredentials } from '../support/bucket.ts';
import { createHarness, type Harness, waitForFinished } from '../support/harness.ts';

let h: Harness;
let s3: S3Server;
const key2026 = randomBytes(32).toString('base64');
const key2027 = randomBytes(32).toString('base64');
let env: Record<string, string>;

/** This file's configuration with `encryption` as given, written where PGMAINT_CONFIG points. */
function configure(encryption: object) {
  h.configFile({
    objectStore: bucketConfig(s3),
    encryption,
    partitions: [{ table: 'app.events', column: 'ts', interval: 'day', retention: '1 day' }],
    backups: { scratchDir: path.join(h.dir, 'scratch') },
  });
}
const before = { keyId: 'k2026', keyEnv: 'TEST_BACKUP_KEY' };
const rotated = { keyId: 'k2027', keyEnv: 'TEST_BACKUP_KEY_2027', previousKeys: [before] };

/** A runtime on the configuration as it is now, with workers for the jobs here (the previous one closed). */
let rt: Runtime | undefined;
async function workersNow(): Promise<Runtime> {
  await rt?.close();
  rt = h.runtime({ schedules: [], env });
  startWorkers(rt, ['backup', 'restore-check', 'drop-expired-partitions']);
  return rt;
}

async function run(name: string, payload: object) {
  const { job } = await rt!.queues.enqueue(name, payload);
  return waitForFinished(rt!.queues.get(name), job.id!, 120_000);
}

beforeAll(async () => {
  h = await createHarness('bucket_crypto');
  s3 = await startS3(path.join(h.dir, 's3'));
  env = {
    ...bucketCredentials(s3),
    TEST_BACKUP_KEY: key2026,
    TEST_BACKUP_KEY_2027: key2027,
  };
  configure(before);
  await h.admin.query(`create schema app;
    create table app.herd as select g as id, 'cow ' || g as name from generate_series(1, 2000) g;
    create table app.events (ts timestamptz not null, v int) partition by range (ts);
    create table app.events_p20260101 partition of app.events
      for values from ('2026-01-01 00:00+00') to ('2026-01-02 00:00+00');
    create table app.events_p20260102 partition of app.events
      for values from ('2026-01-02 00:00+00') to ('2026-01-03 00:00+00');
    insert into app.events
      select '2026-01-01 06:00+00'::timestamptz + make_interval(mins => g), g from generate_series(1, 50) g`);
  await (await workersNow()).history.migrate();
});
afterAll(async () => {
  await h.close();
  await s3?.stop();
});

/** The dump written before the rotation (key k2026). */
let oldDump: string;

describe('authenticated manifests', () => {
  it('an edited row count in a dump manifest (bucket or local) is refused by name; restored, it counts', async () => {
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    oldDump = (b.job.returnvalue as { name: string }).name;
    const store = objectStoreFor(rt!.config)!;
    const key = store.manifestKey('dumps', 'main', oldDump);
    const local = path.join(h.backupDir, 'dumps', 'main', `${oldDump}.manifest.json`);
    const original = fs.readFileSync(local, 'utf8');
    const manifest = JSON.parse(original);
    expect(manifest.mac).toMatchObject({ algorithm: 'hmac-sha256', keyId: 'k2026' });
    expect(manifest.rowCounts['app.herd']).toBe(2000);
    // The same manifest in the bucket.
    expect(JSON.parse((await store.getText(key).then((t) => (t as { text: string }).text)) ?? '')).toEqual(manifest);
    const edited = { ...manifest, rowCounts: { ...manifest.rowCounts, 'app.herd': 1999 } };
    try {
      await store.putJson(key, edited);
      fs.writeFileSync(local, JSON.stringify(edited, null, 2));
      const listing = await listDumps(h.backupDir, 'main', store);
      expect(listing.dumps.map((d) => d.manifest.file)).not.toContain(oldDump);
      expect(listing.refused).toEqual([
        { object: local, reason: expect.stringMatching(/^its MAC \(key "k2026"\) does not verify: .* altered/) },
        { object: store.url(key), reason: expect.stringMatching(/^its MAC \(key "k2026"\) does not verify/) },
      ]);
      const r = await run('restore-check', { dump: oldDump });
      expect(r.state).toBe('failed');
      expect(r.job.failedReason).toContain(`no verified dump ${oldDump} of target "main"`);
      expect(r.job.failedReason).toContain(`refused ${local}: its MAC (key "k2026") does not verify`);
      // A manifest without a MAC (as written before manifests were authenticated, or stripped) is refused too.
      const { mac: _mac, ...unsealed } = manifest;
      await store.putJson(key, unsealed);
      fs.writeFileSync(local, JSON.stringify(unsealed, null, 2));
      const stripped = await listDumps(h.backupDir, 'main', store);
      expect(stripped.refused.map((x) => x.reason)).toEqual([
        expect.stringMatching(/^no MAC: with encryption configured/),
        expect.stringMatching(/^no MAC/),
      ]);
    } finally {
      await store.putJson(key, manifest);
      fs.writeFileSync(local, original);
    }
    const again = await listDumps(h.backupDir, 'main', store);
    store.close();
    expect(again.refused).toEqual([]);
    expect(again.dumps.map((d) => d.manifest.file)).toEqual([oldDump]);
    const ok = await run('restore-check', { dump: oldDump });
    expect(ok.state, ok.job.failedReason).toBe('completed');
    expect(ok.job.returnvalue).toMatchObject({ dump: oldDump, rows: expect.any(Number) });
  });

  it("an edited row count in a partition archive's manifest is refused before it is believed", async () => {
    const r = await run('drop-expired-partitions', { now: '2026-01-05T00:00:00Z' });
    expect(r.state, r.job.failedReason).toBe('completed');
    const [archive] = (r.job.returnvalue as { policies: { archives: { manifest: string }[] }[] }).policies[0]!.archives;
    const file = archive!.manifest;
    const read = await readArchiveManifest(rt!, file);
    expect(read).toMatchObject({ ok: true, value: { partitions: [{ partition: 'app.events_p20260101', rows: 50 }] } });
    const original = fs.readFileSync(file, 'utf8');
    const edited = JSON.parse(original);
    edited.partitions[0].rows = 49;
    fs.writeFileSync(file, JSON.stringify(edited, null, 2));
    try {
      expect(await readArchiveManifest(rt!, file)).toEqual({
        ok: false,
        reason: expect.stringMatching(/^its MAC \(key "k2026"\) does not verify: the manifest was altered/),
      });
    } finally {
      fs.writeFileSync(file, original);
    }
  });
});

describe('key rotation', () => {
  it('a dump written before a rotation is restored after it; new dumps use the new key', async () => {
    configure(rotated);
    await workersNow();
    const r = await run('restore-check', { dump: oldDump });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue).toMatchObject({ dump: oldDump, rows: expect.any(Number) });
    const b = await run('backup', {});
    expect(b.state, b.job.failedReason).toBe('completed');
    const fresh = (b.job.returnvalue as { name: string }).name;
    const manifest = JSON.parse(
      fs.readFileSync(path.join(h.backupDir, 'dumps', 'main', `${fresh}.manifest.json`), 'utf8'),
    );
    expect(manifest.object.encryption).toEqual({ algorithm: 'aes-256-gcm-chunked', keyId: 'k2027' });
    expect(manifest.mac.keyId).toBe('k2027');
    const stored = fs.readFileSync(storedFile(manifest.object.key));
    expect(stored.subarray(0, 14).toString()).toBe('PGMENC2\n\u0005k2027');
    const check = await run('restore-check', { dump: fresh });
    expect(check.state, check.job.failedReason).toBe('completed');
  });

  it('once its key is no longer configured, the old dump fails naming the object and the key id', async () => {
    configure({ keyId: 'k2027', keyEnv: 'TEST_BACKUP_KEY_2027' });
    await workersNow();
    const r = await run('restore-check', { dump: oldDump });
    expect(r.state).toBe('failed');
    expect(r.job.failedReason).toContain(
      `${oldDump}.manifest.json: its MAC is by key "k2026", which is not configured`,
    );
    const store = objectStoreFor(rt!.config)!;
    const listed = JSON.parse(
      fs.readFileSync(path.join(h.backupDir, 'dumps', 'main', `${oldDump}.manifest.json`), 'utf8'),
    );
    await expect(
      store.download(listed.object, path.join(h.dir, 'old.dump')).finally(() => store.close()),
    ).rejects.toThrow(
      `s3://${s3.bucket}/${listed.object.key}: cannot decrypt: it was encrypted with key "k2026", ` +
        'which is not configured',
    );
  });

  it('one key id given twice is refused at start, naming the field', async () => {
    configure({ ...rotated, previousKeys: [before, { keyId: 'k2027', keyEnv: 'TEST_BACKUP_KEY' }] });
    const p = h.spawnPgmaint(['worker'], env);
    expect(await p.exited).toBe(2);
    expect(p.output()).toContain('encryption.previousKeys.1.keyId: "k2027" is already given a key');
    // No key's value in what it printed.
    for (const secret of [key2026, key2027]) expect(p.output()).not.toContain(secret);
    configure(before);
  });
});

/** The file s3rver keeps for an object. */
function storedFile(objectKey: string): string {
  const base = path.join(h.dir, 's3', 'data', s3.bucket, objectKey);
  return fs.existsSync(`${base}._S3rver_object`) ? `${base}._S3rver_object` : base;
}
