// The off-site profile's pgBackRest setup, run on real parts in place of the containers:
// docker/minio-certs.sh makes the certificate, an S3 server (s3rver, standing in for
// MinIO) serves the bucket over TLS with it, and docker/pgbackrest.conf is used as it is
// but for what only a container has (the host name and port of the bucket, the CA's path,
// the data directory and socket). The secrets come from the environment compose gives
// each service. The archive_command and stanza-create are the compose file's; the jobs
// run in a pgmaint worker with docker/pgmaint-offsite.yaml's settings.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import S3rver from 's3rver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import type { PitrDrillResult } from '../../jobs/pitr-drill.ts';
import { chownTree, postgresUser } from '../../src/core/local-postgres.ts';
import { runProcess } from '../../src/core/proc.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { readCompose, root } from '../support/compose-files.ts';
import { createHarness, type Harness, waitForFinished } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let pool: pg.Pool;
let s3: S3rver;
let s3Dir: string;
let bucket: string;

const compose = readCompose(['docker-compose.yml', 'docker-compose.offsite.yml'], {
  POSTGRES_PASSWORD: 'pw',
  ADMIN_TOKEN: 'a'.repeat(24),
  // s3rver's fixed credentials stand for MinIO's root user.
  MINIO_ROOT_USER: 'S3RVER',
  MINIO_ROOT_PASSWORD: 'S3RVER',
  PGMAINT_BACKUP_KEY: randomBytes(32).toString('base64'),
  PGBACKREST_REPO1_CIPHER_PASS: randomBytes(32).toString('base64'),
});
const services = compose.services;

/** A service's PGBACKREST_* variables, and the rest the worker is given. */
const pgbackrestEnv = (name: string) =>
  Object.fromEntries(Object.entries(services[name]!.environment!).filter(([k]) => k.startsWith('PGBACKREST_')));

/** docker/pgbackrest.conf with the container-only settings replaced; every one of them must be in the file. */
function localConf(replace: Record<string, string | number>): string {
  let conf = fs.readFileSync(path.join(root, 'docker/pgbackrest.conf'), 'utf8');
  for (const [key, value] of Object.entries(replace)) {
    const line = new RegExp(`^${key}=.*$`, 'm');
    expect(conf, key).toMatch(line);
    conf = conf.replace(line, `${key}=${value}`);
  }
  return conf;
}

beforeAll(async () => {
  h = await createHarness('compose_offsite');
  const own = await h.ownCluster();
  pool = own.pool;
  const dir = path.join(h.dir, 'compose');
  fs.mkdirSync(dir, { recursive: true });

  // minio-certs: the CA and MinIO's certificate, as the service makes them.
  const [certs, ca] = [path.join(dir, 'certs'), path.join(dir, 'ca')];
  execFileSync('sh', [path.join(root, 'docker/minio-certs.sh'), certs, ca], { stdio: 'ignore' });
  const offsite = YAML.parse(fs.readFileSync(path.join(root, 'docker/pgmaint-offsite.yaml'), 'utf8'));
  bucket = offsite.objectStore.bucket;
  s3Dir = path.join(dir, 's3');
  s3 = new S3rver({
    address: '127.0.0.1',
    port: 0,
    key: fs.readFileSync(path.join(certs, 'private.key')),
    cert: fs.readFileSync(path.join(certs, 'public.crt')),
    silent: true,
    directory: s3Dir,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = (await s3.run()) as { port: number };

  // The certificate names localhost too (MinIO's health check); here it stands for "minio".
  const caFile = path.join(ca, 'ca.crt');
  const conf = localConf({
    'repo1-s3-endpoint': 'localhost',
    'repo1-storage-port': port,
    'repo1-storage-ca-file': caFile,
    'pg1-path': own.pg.dataDir,
    'pg1-socket-path': own.pg.socketDir,
    'pg1-port': own.pg.port,
  });
  const confFile = path.join(dir, 'pgbackrest.conf');
  fs.writeFileSync(confFile, conf);
  // The test's PostgreSQL was started without the database container's environment: its
  // archive-push reads the same secrets from a copy of the file only it can read.
  const secrets = Object.entries(pgbackrestEnv('postgres')).map(
    ([k, v]) => `${k.slice('PGBACKREST_'.length).toLowerCase().replace(/_/g, '-')}=${v}`,
  );
  expect(secrets.map((s) => s.split('=')[0])).toEqual(['repo1-s3-key', 'repo1-s3-key-secret', 'repo1-cipher-pass']);
  const archiveConf = path.join(dir, 'pgbackrest-archive.conf');
  fs.writeFileSync(archiveConf, conf.replace('[global]\n', `[global]\n${secrets.join('\n')}\n`), { mode: 0o600 });
  chownTree(archiveConf, postgresUser());

  // The database container's archive_command, and the pgbackrest-stanza service's command.
  const archive = services.postgres!.command!.find((c) => c.startsWith('archive_command='))!;
  const withConf = (cmd: string, file: string) => cmd.replace(/^pgbackrest /, `pgbackrest --config=${file} `);
  const archiveCommand = withConf(archive.slice('archive_command='.length), archiveConf);
  await pool.query(`alter system set archive_command = '${archiveCommand}'`);
  await pool.query('select pg_reload_conf()');
  const [bin, ...args] = services['pgbackrest-stanza']!.entrypoint!;
  await runProcess(bin!, [`--config=${confFile}`, ...args], {
    ...postgresUser(),
    cwd: '/',
    env: pgbackrestEnv('pgbackrest-stanza'),
  });

  // docker/pgmaint-offsite.yaml, with this machine's paths and port.
  offsite.targets.main.backup.configFile = confFile;
  offsite.objectStore.endpoint = `https://localhost:${port}`;
  offsite.objectStore.caFile = caFile;
  h.configFile({ ...offsite, backups: { drillTables: ['public.ledger'], scratchDir: path.join(h.dir, 'scratch') } });
  const workerEnv = services.worker!.environment!;
  const env = Object.fromEntries(
    Object.entries(workerEnv).filter(([k]) => /^(PGBACKREST_|MINIO_|PGMAINT_BACKUP_KEY$)/.test(k)),
  );
  Object.assign(h.env, env);
  await pool.query('create table ledger as select g as id from generate_series(1, 5000) g');
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
  const worker = h.spawnPgmaint(['worker', '--queues', 'base-backup,archive-check,pitr-drill,prune-backups,backup']);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  await h?.close();
  await s3?.close();
});

async function run(name: string, payload: object) {
  const { job } = await rt.queues.enqueue(name, payload);
  return waitForFinished(rt.queues.get(name), job.id!, 180_000);
}

/** The object keys under a prefix of the bucket (s3rver keeps each object as files under its key). */
function keys(prefix: string): string[] {
  const base = path.join(s3Dir, bucket);
  const dir = path.join(base, prefix);
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((f) => path.join(prefix, f));
}

describe('the off-site profile: pgBackRest in the bucket over TLS, with the compose configuration', () => {
  it('base-backup and archive-check run pgBackRest against the bucket, encrypted, the CA verified', async () => {
    const full = await run('base-backup', { type: 'full' });
    expect(full.state, full.job.failedReason).toBe('completed');
    expect(full.job.returnvalue).toMatchObject({
      engine: 'pgbackrest',
      stanza: 'main',
      type: 'full',
      verified: { method: 'pgbackrest verify', status: 'valid' },
    });
    // pgmaint keeps the sets (prune-backups): pgBackRest's own retention neither warns nor expires.
    const { logs } = await rt.queues.get('base-backup').getJobLogs(full.job.id!);
    expect(logs.join('\n')).not.toMatch(/retention/);
    const check = await run('archive-check', {});
    expect(check.state, check.job.failedReason).toBe('completed');
    expect(check.job.returnvalue).toMatchObject({ engine: 'pgbackrest' });
    expect(keys('pgbackrest/backup/main').length).toBeGreaterThan(0);
    expect(keys('pgbackrest/archive/main').length).toBeGreaterThan(0);
    // The repository is encrypted with the cipher pass compose hands over.
    const configFile = rt.config.targets.get('main')!.backup.configFile!;
    const info = await runProcess('pgbackrest', [`--config=${configFile}`, '--stanza=main', '--output=json', 'info'], {
      ...postgresUser(),
      cwd: '/',
      env: pgbackrestEnv('server'),
    });
    expect(JSON.parse(info.stdout)[0]).toMatchObject({ name: 'main', cipher: 'aes-256-cbc', status: { code: 0 } });
  });

  it('pitr-drill restores from the bucket; the scratch server gets WAL with secrets from the environment', async () => {
    await pool.query('insert into ledger select g from generate_series(5001, 6000) g');
    const r = await run('pitr-drill', {});
    expect(r.state, r.job.failedReason).toBe('completed');
    const checks = (r.job.returnvalue as PitrDrillResult).checks;
    expect(checks.filter((c) => !c.ok)).toEqual([]);
    expect(checks.map((c) => c.name)).toContain('rows of public.ledger at T');
    const prune = await run('prune-backups', { dryRun: true });
    expect(prune.state, prune.job.failedReason).toBe('completed');
    expect(prune.job.returnvalue).toMatchObject({ dryRun: true });
  });

  it('a dump goes to the same bucket, encrypted by pgmaint, over the same TLS', async () => {
    const r = await run('backup', {});
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(keys('pgmaint/dumps/main').length).toBeGreaterThan(0);
  });
});
