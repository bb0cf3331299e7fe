// The S3 client has deadlines and says where it failed. An endpoint that accepts the
// connection and never answers fails the backup after objectStore.requestTimeoutMs per
// attempt, well inside the job's own maximum run time; a refused connection and a wrong
// access key id (s3rver refuses unknown ids) fail it too. Each failure names S3, the
// bucket and the object, and never the credentials.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpDir } from '../src/backup/catalog.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { type S3Server, startS3 } from '../src/dev/s3.ts';
import { createApp } from '../src/http/app.ts';
import { Auth } from '../src/http/auth.ts';
import type { Runtime } from '../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, VIEWER_TOKEN, waitForFinished } from './support/harness.ts';

let h: Harness;
let s3: S3Server;
let silent: net.Server;
const held: net.Socket[] = [];
let rt: Runtime | undefined;

/** A port that refuses connections: bound once, then closed. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

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
