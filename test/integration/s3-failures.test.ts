// The S3 client has deadlines and says where it failed. An endpoint that accepts the
// connection and never answers fails the backup after objectStore.requestTimeoutMs per
// attempt, well inside the job's own maximum run time; a refused connection and a wrong
// access key id (s3rver refuses unknown ids) fail it too. Each failure names S3, the
// bucket and the object, and never the credentials. A read that someone waits for (the
// API, /metrics) has a short deadline of its own; a download that stalls after its answer
// began is read again from the start; a manifest-sized read stops at its cap.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpDir } from '../../src/backup/catalog.ts';
import { ObjectStore } from '../../src/backup/object-store.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { objectStoreSchema } from '../../src/core/config-schema.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { Metrics } from '../../src/monitoring/metrics.ts';
import { HealthSampler } from '../../src/monitoring/sampler.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, VIEWER_TOKEN, waitForFinished } from '../support/harness.ts';
import { closedPort } from '../support/ports.ts';

let h: Harness;
let s3: S3Server;
let silent: net.Server;
const held: net.Socket[] = [];
let rt: Runtime | undefined;

beforeAll(async () => {
  h = await createHarness('s3_failures');
  s3 = await startS3(path.join(h.dir, 's3'));
  // Accepts every connection, reads what comes, and never writes a byte back.
  silent = net.createServer((socket) => {
    held.push(socket);
    socket.on('error', () => undefined);
    socket.resume();
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  await h.admin.query('create table herd as select g as id from generate_series(1, 100) g');
});
afterAll(async () => {
  await h.close();
  for (const s of held) s.destroy();
  silent?.close();
  await s3?.stop();
});

/** A runtime whose objectStore points at `endpoint`, with small deadlines, running backup once per request. */
async function backupAgainst(endpoint: string, env: Record<string, string>) {
  await rt?.close();
  h.configFile({
    objectStore: {
      bucket: s3.bucket,
      endpoint,
      forcePathStyle: true,
      caFile: s3.caFile,
      accessKeyIdEnv: 'TEST_S3_KEY',
      secretAccessKeyEnv: 'TEST_S3_SECRET',
      connectTimeoutMs: 500,
      requestTimeoutMs: 1000,
      maxAttempts: 2,
    },
    // The job's own deadline is far beyond the client's: the run must end on the client's.
    jobs: { backup: { attempts: 1, timeoutMs: 100_000 } },
  });
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
  startWorkers(rt, ['backup']);
  const { job } = await rt.queues.enqueue('backup', {});
  return waitForFinished(rt.queues.get('backup'), job.id!, 110_000);
}

const credentials = () => ({ TEST_S3_KEY: s3.accessKeyId, TEST_S3_SECRET: s3.secretAccessKey });
const dumpKey = String.raw`pgmaint\/dumps\/main\/main-\d{8}T\d{9}Z\.dump`;

describe('S3 deadlines and failures', () => {
  it(
    'an endpoint that accepts and never answers fails the backup on the request deadline, ' +
      'naming S3, the bucket and the object',
    async () => {
      const { port } = silent.address() as net.AddressInfo;
      const { state, job } = await backupAgainst(`https://127.0.0.1:${port}`, credentials());
      expect(state).toBe('failed');
      expect(job.failedReason).toMatch(
        new RegExp(
          `^OBJECT_STORE: s3://${s3.bucket}/${dumpKey}: S3 upload failed: no answer within 1000 ms ` +
            String.raw`\(objectStore\.requestTimeoutMs\) \(2 attempts\)$`,
        ),
      );
      await rt!.history.flush();
      const { rows } = await h.admin.query(
        `select outcome from pgmaint.run_history where job = 'backup' and job_id = $1`,
        [job.id],
      );
      expect(rows).toEqual([{ outcome: 'failed' }]); // not timed_out: the job's own deadline never came
      // Nothing half-done: no dump and no manifest are left to count.
      expect(fs.readdirSync(dumpDir(h.backupDir, 'main')).filter((f) => !f.startsWith('.'))).toEqual([]);
      // The catalog reads the bucket too: the API answers 503, naming it, rather than hanging.
      const res = await request(createApp(rt!, new Auth(ADMIN_TOKEN, VIEWER_TOKEN)))
        .get('/api/backups')
        .set('Authorization', `Bearer ${ADMIN_TOKEN}`)
        .expect(503);
      expect(res.body.error).toMatch(
        new RegExp(`^s3://${s3.bucket}/pgmaint/dumps/main/: S3 listing failed: no answer within 1000 ms`),
      );
    },
  );

  it('a refused connection: the upload failure names S3, the bucket and the object', async () => {
    const port = await closedPort();
    const { state, job } = await backupAgainst(`https://127.0.0.1:${port}`, credentials());
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(
      new RegExp(
        `^OBJECT_STORE: s3://${s3.bucket}/${dumpKey}: S3 upload failed: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}`,
      ),
    );
  });

  it('a wrong access key id is refused by the server; the failure names the object, not the credentials', async () => {
    const wrong = {
      TEST_S3_KEY: `AKWRONG${randomBytes(6).toString('hex').toUpperCase()}`,
      TEST_S3_SECRET: 'x'.repeat(40),
    };
    const { state, job } = await backupAgainst(s3.endpoint, { ...credentials(), ...wrong });
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(
      new RegExp(
        `^OBJECT_STORE: s3://${s3.bucket}/${dumpKey}: S3 upload failed: InvalidAccessKeyId: The AWS Access Key Id`,
      ),
    );
    const logs = (await rt!.queues.get('backup').getJobLogs(job.id!)).logs.join('\n');
    for (const text of [job.failedReason, JSON.stringify(job.data), logs]) {
      expect(text).not.toContain(wrong.TEST_S3_KEY);
      expect(text).not.toContain(wrong.TEST_S3_SECRET);
    }
    // The right id, as a control: the same backup goes through.
    const ok = await backupAgainst(s3.endpoint, credentials());
    expect(ok.state, ok.job.failedReason).toBe('completed');
  });
});

describe('reads that someone waits for', () => {
  it('a bucket that never answers: /api/backups answers 503 naming S3 and the bucket, /api/status and /metrics ' +
    'a partial reading, on the answer deadline whatever the job-sized S3 deadlines are', async () => {
    await rt?.close();
    const { port } = silent.address() as net.AddressInfo;
    h.configFile({
      objectStore: {
        bucket: s3.bucket,
        endpoint: `https://127.0.0.1:${port}`,
        forcePathStyle: true,
        caFile: s3.caFile,
        accessKeyIdEnv: 'TEST_S3_KEY',
        secretAccessKeyEnv: 'TEST_S3_SECRET',
        // The defaults: 3 attempts of 120 s each would keep a request waiting 6 minutes.
        requestTimeoutMs: 120_000,
        maxAttempts: 3,
      },
    });
    rt = h.runtime({ schedules: [], env: credentials() });
    await rt.history.migrate();
    // Interval 0: every answer takes a reading of its own, as `?fresh=1` and the first one do.
    const health = new HealthSampler(rt, new HealthReader(rt), 0);
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN), { health, metrics: new Metrics(health) });
    const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
    const why = String.raw`no answer within 4000 ms \(the deadline of a read that answers a request\)`;
    const listing = new RegExp(`^s3://${s3.bucket}/pgmaint/dumps/main/: S3 listing failed: ${why}$`);
    const [backups, status, metrics] = await Promise.all([
      request(app).get('/api/backups').set(admin),
      request(app).get('/api/status').set(admin),
      request(app).get('/metrics').set(admin),
    ]);
    expect(backups.status).toBe(503);
    expect(backups.body.error).toMatch(listing);
    expect(status.status).toBe(200);
    // Per target: the target is still listed, reachable, with its backups unknown.
    expect(status.body.errors['backups:main']).toMatch(listing);
    expect(status.body.targets).toEqual([
      expect.objectContaining({ target: 'main', reachable: true, dumpAgeSeconds: null, baseBackupAgeSeconds: null }),
    ]);
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^pgmaint_health_read_errors\{part="backups:main"\} 1$/m);
  }, 60_000);
});

/** An HTTPS endpoint with s3rver's certificate that answers every GET with `body`, misbehaving as told. */
function misbehavingS3(body: Buffer) {
  const state = {
    mode: 'stall' as 'stall' | 'stall-once' | 'unsized',
    requests: 0,
    /** Bytes of the body sent before a stall. */
    before: 1024,
  };
  const server = https.createServer(
    { key: fs.readFileSync(path.join(h.dir, 's3', 'key.pem')), cert: fs.readFileSync(s3.caFile) },
    (req, res) => {
      state.requests++;
      req.resume();
      if (state.mode === 'unsized') {
        // Chunked, with no Content-Length: only counting what arrives can stop it.
        res.writeHead(200, { 'content-type': 'application/json' });
        const write = () => {
          while (!res.destroyed && res.write(body));
          if (!res.destroyed) res.once('drain', write);
        };
        write();
        return;
      }
      res.writeHead(200, { 'content-length': String(body.length) });
      if (state.mode === 'stall' || (state.mode === 'stall-once' && state.requests === 1)) {
        res.write(body.subarray(0, state.before)); // then silence, with the connection open
        return;
      }
      res.end(body);
    },
  );
  return { state, server };
}

describe('reading an object', () => {
  const body = randomBytes(256 * 1024);
  let fake: ReturnType<typeof misbehavingS3>;
  let store: ObjectStore;
  beforeAll(async () => {
    fake = misbehavingS3(body);
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
    const { port } = fake.server.address() as net.AddressInfo;
    const cfg = objectStoreSchema.parse({
      bucket: s3.bucket,
      endpoint: `https://127.0.0.1:${port}`,
      forcePathStyle: true,
      caFile: s3.caFile,
      requestTimeoutMs: 1000,
      maxAttempts: 2,
    });
    store = new ObjectStore(cfg, undefined, {
      s3: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      keys: {},
    });
  });
  afterAll(() => {
    store?.close();
    fake?.server.closeAllConnections();
    fake?.server.close();
  });

  it('a download that stalls after its answer began is read again from the start; one that keeps stalling fails ' +
    'saying so, naming S3, the bucket and the object', async () => {
    const sha256 = createHash('sha256').update(body).digest('hex');
    const object = {
      bucket: s3.bucket,
      key: 'pgmaint/dumps/main/main-20261201T000000000Z.dump',
      bytes: body.length,
      sha256,
      encryption: null,
      uploadedAt: new Date().toISOString(),
    };
    const file = path.join(h.dir, 'downloaded.dump');
    fs.writeFileSync(file, 'stale');
    Object.assign(fake.state, { mode: 'stall-once', requests: 0 });
    await store.download(object, file);
    expect(fake.state.requests).toBe(2);
    expect(fs.readFileSync(file).equals(body)).toBe(true);

    Object.assign(fake.state, { mode: 'stall', requests: 0 });
    await expect(store.download(object, file)).rejects.toThrow(
      `s3://${s3.bucket}/${object.key}: S3 download failed: the transfer stalled: no data for 1000 ms after the ` +
        'answer began (objectStore.requestTimeoutMs) (2 attempts)',
    );
    expect(fake.state.requests).toBe(2);
    Object.assign(fake.state, { mode: 'stall-once', requests: 0 });
    expect(await store.sha256Of(object.key)).toEqual({ sha256, bytes: body.length });
  }, 60_000);

  it('a manifest-sized read stops at the cap when the object announces no length, and is refused', async () => {
    Object.assign(fake.state, { mode: 'unsized', requests: 0 });
    const read = await store.getText('pgmaint/dumps/main/main-20261201T000000000Z.dump.manifest.json');
    expect(read).toEqual({
      refused:
        'more than 1048576 bytes: larger than the 1048576 bytes (1 MiB) a manifest or verdict may have; not read',
    });
  });
});
