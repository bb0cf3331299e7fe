// Off-host backups, pgmaint against the same work done by hand, on one cluster of
// about 1 GB (orders with an index; --rows to change the size), its pgBackRest
// repository in a local S3 bucket (s3rver over TLS), encrypted, lz4, process-max 2:
//   base backup: pgmaint base-backup (pgbackrest engine)  vs  pgbackrest backup + verify + info by hand
//   drill:       pgmaint pitr-drill from the bucket       vs  pgbackrest restore + start to promotion by hand
//   dump upload: pgmaint encrypted upload                 vs  a plain SDK multipart upload of the same file
// Each pair runs --rounds times (default 3), interleaved; both sides are timed from
// outside. Work one side does and the other does not is on a row of its own.
//   npm run bench:offsite [-- --rows 9000000 --rounds 3]
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Upload } from '@aws-sdk/lib-storage';
import pg from 'pg';
import { ObjectStore } from '../src/backup/object-store.ts';
import { s3ClientFor } from '../src/backup/s3-client.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { configSecrets, loadConfig } from '../src/core/config.ts';
import { freePort, postgresUser } from '../src/core/local-postgres.ts';
import { createLogger } from '../src/core/logger.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createStanza, s3RepoLines } from '../src/dev/pgbackrest-stanza.ts';
import { startS3 } from '../src/dev/s3.ts';
import { createRuntime } from '../src/pgmaint.ts';
import { interleave, loadAverage, median, printTable, row, timed } from './method.ts';
import { jobRunner } from './run-job.ts';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '9000000' },
    rounds: { type: 'string', default: '3' },
    /** Comma-separated parts to run: base, drill, upload. */
    only: { type: 'string', default: 'base,drill,upload' },
  },
});
const ROWS = Number(values.rows);
const ROUNDS = Math.max(3, Number(values.rounds));
const ONLY = new Set(values.only!.split(','));
if (spawnSync('pgbackrest', ['version']).status !== 0) {
  console.error('pgBackRest is not installed: apt-get install -y pgbackrest');
  process.exit(2);
}
const loadBefore = loadAverage();
const owner = postgresUser();
const asOwner = owner ? { uid: owner.uid, gid: owner.gid } : {};
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-offsite-'));
fs.chmodSync(dir, 0o755);

const server = await startPostgres({ dir: path.join(dir, 'pg'), settings: { max_wal_size: "'4GB'", fsync: 'on' } });
const redis = await startRedis({ dir: path.join(dir, 'redis') });
const s3 = await startS3(path.join(dir, 's3'));
await createDatabase(server, 'dairy');
const pool = new pg.Pool({ connectionString: server.url('dairy'), max: 2 });
const cipherPass = randomBytes(24).toString('base64url');
const stanza = await createStanza(server, pool, dir, {
  repoLines: [...s3RepoLines(s3, cipherPass), 'process-max=2'],
});

console.error(`seeding ${ROWS} order rows…`);
await pool.query(`create schema sales;
  create table sales.sale_order (id bigint primary key, company_id int not null, partner_id int not null,
    state text not null, date_order timestamptz not null, amount_total numeric(12,2) not null, note text)`);
for (let from = 1; from <= ROWS; from += 1_000_000) {
  await pool.query(
    `insert into sales.sale_order
       select g, 1 + g % 3, 1 + g % 5000, (array['draft','sale','sale','done','cancel'])[1 + g % 5],
       timestamptz '2024-11-01' + make_interval(secs => g * 7), round((50 + (g * 7919 % 500000) / 100.0)::numeric, 2),
       'order ' || g from generate_series($1::bigint, $2::bigint) g`,
    [from, Math.min(ROWS, from + 999_999)],
  );
}
await pool.query('checkpoint');
const { rows: sz } = await pool.query<{ mb: number }>(`select round(pg_database_size('dairy') / 1048576.0) as mb`);
console.error(`database: ${sz[0]!.mb} MB`);

const env = { S3_KEY: s3.accessKeyId, S3_SECRET: s3.secretAccessKey, BACKUP_KEY: randomBytes(32).toString('base64') };
const configFile = path.join(dir, 'pgmaint.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({
    targets: { main: { backup: { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile } } },
    backups: { drillTables: ['sales.sale_order'], scratchDir: path.join(dir, 'scratch') },
    objectStore: {
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      forcePathStyle: true,
      caFile: s3.caFile,
      accessKeyIdEnv: 'S3_KEY',
      secretAccessKeyEnv: 'S3_SECRET',
    },
    encryption: { keyId: 'bench', keyEnv: 'BACKUP_KEY' },
    jobs: { 'pitr-drill': { timeoutMs: 3_600_000 } },
  }),
);
const config = loadConfig({
  ...process.env,
  ...env,
  DATABASE_URL: server.url('dairy'),
  REDIS_URL: redis.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: configFile,
});
const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
await rt.history.migrate();
startWorkers(rt, ['base-backup', 'pitr-drill', 'backup']);
const job = jobRunner(rt);
const pgbackrest = (args: string[]) => stanza.pgbackrest(args);

const baseRows: string[][] = [];
const drillRows: string[][] = [];
const uploadRows: string[][] = [];

// 1. Base backup: the same three commands pgmaint runs, by hand.
if (ONLY.has('base')) {
  const base = await interleave(
    [
      { name: 'pgmaint base-backup', run: async () => (await job('base-backup', { type: 'full' })).ms },
      {
        name: 'pgbackrest backup+verify+info',
        run: () =>
          timed(async () => {
            await pgbackrest(['backup', '--type=full']);
            await pgbackrest(['verify', '--output=text', '--verbose']);
            await pgbackrest(['info', '--output=json']);
          }),
      },
    ],
    ROUNDS,
  );
  baseRows.push(row('full base backup to the bucket, verified (s)', base[0]!, base[1]!, '≤ 1.05×'));
}

// 2. Drill: pgmaint's whole job against restore + start to promotion by hand. The job
// also writes markers, forces and waits for a WAL segment, and checks the data: its
// RTO (restore + replay to promotion, timed inside) is on a row of its own.
if (ONLY.has('drill')) {
  const drillRto: number[] = [];
  const restoreByHand = async (round: number) => {
    const data = path.join(dir, `hand-${round}`, 'data');
    fs.mkdirSync(data, { recursive: true, mode: 0o700 });
    if (owner) spawnSync('chown', ['-R', `${owner.uid}:${owner.gid}`, path.dirname(data)]);
    const port = await freePort();
    const ms = await timed(async () => {
      // Like the drill: the newest set, then every archived segment up to the end of the archive, then promotion.
      await pgbackrest(['restore', `--pg1-path=${data}`]);
      const settings = [`port = ${port}`, 'archive_mode = off', "listen_addresses = ''"];
      settings.push(`unix_socket_directories = '${path.dirname(data)}'`);
      fs.appendFileSync(path.join(data, 'postgresql.auto.conf'), `\n${settings.join('\n')}\n`);
      await runProcess(
        binPath('pg_ctl'),
        ['-D', data, '-l', path.join(path.dirname(data), 'log'), '-w', 'start'],
        asOwner,
      );
      for (;;) {
        const r = spawnSync(binPath('psql'), [
          '-XAtq',
          '-h',
          path.dirname(data),
          '-p',
          String(port),
          '-U',
          'postgres',
          '-d',
          'dairy',
          '-c',
          'select pg_is_in_recovery()',
        ]);
        if (r.stdout?.toString().trim() === 'f') break;
        await sleep(100);
      }
    });
    await runProcess(binPath('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], asOwner).catch(() => undefined);
    fs.rmSync(path.dirname(data), { recursive: true, force: true });
    return ms;
  };
  const drill = await interleave(
    [
      {
        name: 'pgmaint pitr-drill',
        run: async () => {
          const r = await job('pitr-drill', {});
          drillRto.push(r.result.rtoSeconds * 1000);
          return r.ms;
        },
      },
      { name: 'pgbackrest restore + promotion', run: restoreByHand },
    ],
    ROUNDS,
  );
  const rto = { name: 'drill RTO (inside the job)', ms: drillRto };
  drillRows.push(
    row('drill from the bucket, whole job vs restore to promotion (s)', drill[0]!, drill[1]!),
    row('drill RTO: restore + replay to promotion (s)', rto, drill[1]!, '≤ 1.1×'),
  );
}

// 3. Upload of one dump file: pgmaint encrypts, uploads, and reads the object back;
// the plain upload only uploads. The read-back is on a row of its own.
if (ONLY.has('upload')) {
  const dump = await job('backup', {});
  const dumpFile = path.join(dir, 'bench-upload.dump');
  fs.copyFileSync(path.join(dir, 'backups', 'dumps', 'main', path.basename(dump.result.file as string)), dumpFile);
  const store = new ObjectStore(config.objectStore!, config.encryption, configSecrets(config));
  // The same client settings as ours (deadlines, retries, keep-alive, CA): only the work done differs.
  const plain = s3ClientFor(config.objectStore!, configSecrets(config).s3);
  const readBack: number[] = [];
  const upload = await interleave(
    [
      {
        name: 'pgmaint encrypted upload + read-back',
        // upload() encrypts, uploads and reads the object back once; the read-back is
        // timed again on its own (outside the timed region) to split it out.
        run: async (r) => {
          const ms = await timed(() => store.upload(dumpFile, `bench/ours-${r}.enc`));
          readBack.push(await timed(() => store.sha256Of(`bench/ours-${r}.enc`)));
          return ms;
        },
      },
      {
        name: 'plain SDK multipart upload',
        run: (r) =>
          timed(() =>
            new Upload({
              client: plain,
              params: { Bucket: s3.bucket, Key: `bench/plain-${r}`, Body: fs.createReadStream(dumpFile) },
              queueSize: 2,
              partSize: 8 * 1024 * 1024,
            }).done(),
          ),
      },
    ],
    ROUNDS,
  );
  const oursWithoutReadBack = { name: 'encrypt + upload', ms: upload[0]!.ms.map((ms, i) => ms - readBack[i]!) };
  const mb = fs.statSync(dumpFile).size / 1048576;
  uploadRows.push(
    row(`dump upload ${mb.toFixed(0)} MB: encrypt + upload vs plain upload (s)`, oursWithoutReadBack, upload[1]!),
    row('  the same, with the read-back that proves the object (s)', upload[0]!, upload[1]!),
    [
      '  throughput, encrypt + upload vs plain (MB/s)',
      (mb / (median(oursWithoutReadBack.ms) / 1000)).toFixed(0),
      (mb / (median(upload[1]!.ms) / 1000)).toFixed(0),
      `${(median(upload[1]!.ms) / median(oursWithoutReadBack.ms)).toFixed(2)}×`,
      '≥ 0.8×',
    ],
  );
  store.close();
  plain.destroy();
}

printTable(
  `Off-host backups, ${sz[0]!.mb} MB database, ${ROUNDS} interleaved rounds, medians (min–max); ` +
    `load average before ${loadBefore}, after ${loadAverage()}`,
  ['what', 'pgmaint', 'by hand', 'pgmaint / by hand', 'target'],
  [...baseRows, ...drillRows, ...uploadRows],
);

await job.close();
await rt.close();
await pool.end();
await s3.stop();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
process.exit(0);
