// Off-host backups, pgmaint against the same work done by hand, on one cluster of
// about 1 GB (orders with an index; --rows to change the size), its pgBackRest
// repository in a local S3 bucket (s3rver over TLS), encrypted, lz4, process-max 2:
//   base backup: pgmaint base-backup (pgbackrest engine)  vs  pgbackrest backup + verify + info by hand
//   drill:       pgmaint pitr-drill from the bucket       vs  the same drill by hand (markers, T, WAL switch,
//                restore to T, start, promotion, the checks, teardown)
//   dump upload: pgmaint encrypted upload, read back      vs  a plain SDK multipart upload, read back
// pgmaint runs as a user runs it: a worker process, and per run the CLI as a child
// (`pgmaint enqueue … --wait`), timed from the child's start to its exit. Each pair runs
// --rounds times (default 3), interleaved, every other round in reverse order. Work one
// side does and the other does not is on a row of its own, timed on its own.
//   npm run bench:offsite [-- --rows 9000000 --rounds 3]
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import pg from 'pg';
import { ObjectStore } from '../src/backup/object-store.ts';
import { s3ClientFor } from '../src/backup/s3-client.ts';
import { configSecrets, loadConfig } from '../src/core/config.ts';
import { freePort } from '../src/core/local-postgres.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createStanza, s3RepoLines } from '../src/dev/pgbackrest-stanza.ts';
import { startS3 } from '../src/dev/s3.ts';
import { cliJob, startWorker } from './cli-job.ts';
import { interleave, loadAverage, printTable, row, type Sample, timed, verdict } from './method.ts';
import { pgbackrestWorkdir } from './workdir.ts';

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
const loadBefore = loadAverage();
const { dir, owner, asOwner } = pgbackrestWorkdir('offsite');

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
const workerEnv = {
  ...process.env,
  ...env,
  DATABASE_URL: server.url('dairy'),
  REDIS_URL: redis.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  PGMAINT_CONFIG: configFile,
  LOG_LEVEL: 'warn',
};
const config = loadConfig(workerEnv);
const worker = await startWorker(workerEnv, ['base-backup', 'pitr-drill', 'backup']);
// A failed run leaves nothing running: the worker and the servers go with this process.
process.on('exit', () => {
  worker.kill();
  for (const d of fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.startsWith('hand-')) : [])
    spawnSync(binPath('pg_ctl'), ['-D', path.join(dir, d, 'data'), '-m', 'immediate', '-w', 'stop'], {
      ...asOwner,
      stdio: 'ignore',
    });
  redis.process.kill('SIGKILL');
  server.stopSync();
  fs.rmSync(dir, { recursive: true, force: true });
});
const pgbackrest = (args: string[]) => stanza.pgbackrest(args);
// The drill and the base backups need a set to start from: one, before any round.
await pgbackrest(['backup', '--type=full']);

const baseRows: string[][] = [];
const drillRows: string[][] = [];
const uploadRows: string[][] = [];
const withVerdict = (r: string[], ours: Sample, theirs: Sample, target?: string) => [
  ...r,
  verdict(ours, theirs, target),
];

// 1. Base backup: the same three commands pgmaint runs, by hand. `verify` reads every
// set in the repository, so before each run (untimed) the repository is brought back to
// one set: every run, on either side, verifies the same two sets and the WAL from the
// older one on.
if (ONLY.has('base')) {
  const oneSet = () => pgbackrest(['expire', '--repo1-retention-full=1']);
  const base = await interleave(
    [
      {
        name: 'pgmaint base-backup',
        run: async () => {
          await oneSet();
          return (await cliJob(workerEnv, 'base-backup', { type: 'full' })).ms;
        },
      },
      {
        name: 'pgbackrest backup+verify+info',
        run: async () => {
          await oneSet();
          return timed(async () => {
            await pgbackrest(['backup', '--type=full']);
            await pgbackrest(['verify', '--output=text', '--verbose']);
            await pgbackrest(['info', '--output=json']);
          });
        },
      },
    ],
    ROUNDS,
    { alternate: true },
  );
  baseRows.push(
    withVerdict(
      row('full base backup to the bucket, verified (s)', base[0]!, base[1]!, '≤ 1.05×'),
      base[0]!,
      base[1]!,
      '≤ 1.05×',
    ),
  );
}

// 2. Drill: pgmaint's whole job (the CLI child's start to its exit) against the same
// drill by hand, step for step: markers M1 and M2 around a target time T with the
// drill table's row count at T, a WAL switch and the wait for that segment in the
// repository, restore to T (promote), start, the wait for promotion, the checks (M1
// there, M2 not, the row count), then stop and delete.
if (ONLY.has('drill')) {
  await pool.query(`create schema if not exists bench;
    create table if not exists bench.drill_marker (drill text not null, marker text not null,
      primary key (drill, marker))`);
  const drillByHand = async (round: number) => {
    const data = path.join(dir, `hand-${round}`, 'data');
    fs.mkdirSync(data, { recursive: true, mode: 0o700 });
    if (owner) spawnSync('chown', ['-R', `${owner.uid}:${owner.gid}`, path.dirname(data)]);
    const port = await freePort();
    const drill = `hand-${round}`;
    const ms = await timed(async () => {
      await pool.query(`insert into bench.drill_marker values ($1, 'M1')`, [drill]);
      const c = await pool.connect();
      let t: string;
      let rowsAtT: number;
      try {
        await c.query('begin isolation level repeatable read read only');
        t = (
          await c.query<{ t: string }>(`select to_char(clock_timestamp() at time zone 'UTC',
          'YYYY-MM-DD HH24:MI:SS.US+00') as t`)
        ).rows[0]!.t;
        rowsAtT = Number((await c.query<{ n: string }>('select count(*) as n from sales.sale_order')).rows[0]!.n);
        await c.query('commit');
      } finally {
        c.release();
      }
      await sleep(20);
      await pool.query(`insert into bench.drill_marker values ($1, 'M2')`, [drill]);
      const { rows: seg } = await pool.query<{ s: string }>('select pg_walfile_name(pg_switch_wal()) as s');
      for (;;) {
        const info = JSON.parse((await pgbackrest(['info', '--output=json'])).stdout) as {
          archive?: { max?: string }[];
        }[];
        const max = info[0]?.archive?.[0]?.max;
        if (max && max.slice(8) >= seg[0]!.s.slice(8)) break;
        await sleep(500);
      }
      await pgbackrest(['restore', '--type=time', `--target=${t}`, '--target-action=promote', `--pg1-path=${data}`]);
      const settings = [
        `port = ${port}`,
        "listen_addresses = ''",
        `unix_socket_directories = '${path.dirname(data)}'`,
        'archive_mode = off',
        'hot_standby = off',
      ];
      fs.appendFileSync(path.join(data, 'postgresql.auto.conf'), `\n${settings.join('\n')}\n`);
      await runProcess(
        binPath('pg_ctl'),
        ['-D', data, '-l', path.join(path.dirname(data), 'log'), '-w', '-t', '1800', 'start'],
        { ...asOwner, pgbackrestOptions: true },
      );
      const restored = { host: path.dirname(data), port, user: 'postgres', database: 'dairy' };
      for (;;) {
        const r = new pg.Client(restored);
        r.on('error', () => undefined);
        try {
          await r.connect();
          if (!(await r.query<{ r: boolean }>('select pg_is_in_recovery() as r')).rows[0]!.r) break;
        } catch {
          // starting, or still replaying
        } finally {
          await r.end().catch(() => undefined);
        }
        await sleep(100);
      }
      const r = new pg.Client(restored);
      await r.connect();
      const markers = (
        await r.query<{ marker: string }>('select marker from bench.drill_marker where drill = $1', [drill])
      ).rows.map((x) => x.marker);
      const n = Number((await r.query<{ n: string }>('select count(*) as n from sales.sale_order')).rows[0]!.n);
      await r.end();
      if (!markers.includes('M1') || markers.includes('M2') || n !== rowsAtT)
        throw new Error(`the drill by hand failed: markers ${markers.join(',')}, rows ${n} (at T ${rowsAtT})`);
      await runProcess(binPath('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], asOwner);
      fs.rmSync(path.dirname(data), { recursive: true, force: true });
    });
    return ms;
  };
  const drill = await interleave(
    [
      { name: 'pgmaint pitr-drill', run: async () => (await cliJob(workerEnv, 'pitr-drill', {})).ms },
      { name: 'the same drill by hand', run: drillByHand },
    ],
    ROUNDS,
    { alternate: true },
  );
  drillRows.push(
    withVerdict(
      row('drill from the bucket, to T and promoted, checked, torn down (s)', drill[0]!, drill[1]!, '≤ 1.1×'),
      drill[0]!,
      drill[1]!,
      '≤ 1.1×',
    ),
  );
}

// 3. Upload of one dump file: pgmaint encrypts, uploads and reads the object back (its
// proof); timed as a whole, from outside the call. The plain side uploads and reads back
// in one stopwatch; the plain upload alone and each read-back alone are sides of their own.
if (ONLY.has('upload')) {
  const dump = await cliJob(workerEnv, 'backup', {});
  const dumpFile = path.join(dir, 'bench-upload.dump');
  fs.copyFileSync(dump.result.file as string, dumpFile);
  const store = new ObjectStore(config.objectStore!, config.encryption, configSecrets(config));
  // The same client settings as ours (deadlines, retries, keep-alive, CA): only the work done differs.
  const plain = s3ClientFor(config.objectStore!, configSecrets(config).s3);
  const plainUpload = (key: string) =>
    new Upload({
      client: plain,
      params: { Bucket: s3.bucket, Key: key, Body: fs.createReadStream(dumpFile) },
      queueSize: 2,
      partSize: 8 * 1024 * 1024,
    }).done();
  const plainReadBack = async (key: string) => {
    const res = await plain.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    const hash = createHash('sha256');
    for await (const c of res.Body as AsyncIterable<Buffer>) hash.update(c);
    return hash.digest('hex');
  };
  // What the read-back sides read: one object of each, uploaded before the rounds (untimed).
  await store.upload(dumpFile, 'bench/ours-read.enc');
  await plainUpload('bench/plain-read');
  const upload = await interleave(
    [
      {
        name: 'pgmaint encrypted upload (read back)',
        run: (r) => timed(() => store.upload(dumpFile, `bench/ours-${r}.enc`)),
      },
      {
        name: 'plain SDK upload + read-back',
        run: (r) =>
          timed(async () => {
            await plainUpload(`bench/plain-${r}`);
            await plainReadBack(`bench/plain-${r}`);
          }),
      },
      { name: 'plain SDK upload', run: (r) => timed(() => plainUpload(`bench/upload-only-${r}`)) },
      { name: 'pgmaint read-back', run: () => timed(() => store.sha256Of('bench/ours-read.enc')) },
      { name: 'plain read-back', run: () => timed(() => plainReadBack('bench/plain-read')) },
    ],
    ROUNDS,
    { alternate: true },
  );
  const mb = fs.statSync(dumpFile).size / 1048576;
  uploadRows.push(
    withVerdict(
      row(`dump upload ${mb.toFixed(0)} MB, read back: pgmaint vs plain (s)`, upload[0]!, upload[1]!, '≤ 1.25×'),
      upload[0]!,
      upload[1]!,
      '≤ 1.25×',
    ),
    withVerdict(
      row('  pgmaint (with its read-back) vs the plain upload alone (s)', upload[0]!, upload[2]!),
      upload[0]!,
      upload[2]!,
    ),
    withVerdict(
      row('  the read-back alone: pgmaint vs plain GET + sha256 (s)', upload[3]!, upload[4]!),
      upload[3]!,
      upload[4]!,
    ),
  );
  store.close();
  plain.destroy();
}

printTable(
  `Off-host backups, ${sz[0]!.mb} MB database, ${ROUNDS} interleaved rounds, medians (min–max); ` +
    `load average before ${loadBefore}, after ${loadAverage()}`,
  ['what', 'pgmaint', 'by hand', 'pgmaint / by hand', 'target', 'verdict'],
  [...baseRows, ...drillRows, ...uploadRows],
);

await worker.stop();
await pool.end();
await s3.stop();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
process.exit(0);
