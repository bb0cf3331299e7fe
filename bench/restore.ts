// Restores, pgmaint against the same restore by hand, on one cluster (orders, order
// lines and partners with their indexes; --rows orders, twice as many lines):
//   restore-cluster: `pgmaint enqueue restore-cluster --wait` (pgBackRest engine, local
//     posix repository, lz4, process-max 2, to the end of the archive, promoted on a port)
//     against `pgbackrest restore` + `pg_ctl start` + the wait for promotion by hand;
//     both timed from the command's start to "promoted and accepting connections", seen
//     from outside over a new connection (select pg_is_in_recovery() = false).
//   restore-dump: `pgmaint enqueue restore-dump --wait` of a dump whose only copy is in the
//     bucket (s3rver over TLS, keepLocal false), encrypted, into a new database with
//     pg_restore -j N, against a plain SDK download of the same dump uploaded unencrypted,
//     createdb and pg_restore -j N by hand; timed from the start to "pg_restore finished"
//     (for pgmaint: the CLI's exit). pgmaint unencrypted against the same hand side shows
//     the decryption's cost on its own; the hand side with pgmaint's checks (sha256 of the
//     file, row counts) shows what pgmaint's proof costs.
// pgmaint runs as a user runs it: a worker process, and the CLI as a child per run.
// Each side runs --rounds times (at least 3), interleaved, every other round reversed.
//   npm run bench:restore [-- --rows 2000000 --rounds 3 --parallel 2 --only cluster,dump]
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import pg from 'pg';
import { s3ClientFor } from '../src/backup/s3-client.ts';
import { configSecrets, loadConfig } from '../src/core/config.ts';
import { sha256File } from '../src/core/files.ts';
import { freePort } from '../src/core/local-postgres.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { createStanza } from '../src/dev/pgbackrest-stanza.ts';
import { startS3 } from '../src/dev/s3.ts';
import { cliJob, startWorker, type WorkerProcess } from './cli-job.ts';
import { fmt, interleave, loadAverage, printTable, row, type Sample, timed, verdict } from './method.ts';
import { pgbackrestWorkdir } from './workdir.ts';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '2000000' },
    rounds: { type: 'string', default: '3' },
    /** pg_restore -j on both sides. */
    parallel: { type: 'string', default: '2' },
    /** Comma-separated parts to run: cluster, dump. */
    only: { type: 'string', default: 'cluster,dump' },
  },
});
const ROWS = Number(values.rows);
const ROUNDS = Math.max(3, Number(values.rounds));
const JOBS = Number(values.parallel);
const ONLY = new Set(values.only.split(','));
const loadBefore = loadAverage();
const { dir, owner, asOwner } = pgbackrestWorkdir('restore');
const workers: WorkerProcess[] = [];
/** Restored clusters that may be running: stopped on exit, whatever ends the run. */
const running = new Set<string>();

const server = await startPostgres({ dir: path.join(dir, 'pg'), settings: { max_wal_size: "'4GB'" } });
const redis = await startRedis({ dir: path.join(dir, 'redis') });
const s3 = await startS3(path.join(dir, 's3'));
await createDatabase(server, 'dairy');
const pool = new pg.Pool({ connectionString: server.url('dairy'), max: 2 });
// A failed run leaves nothing running: the servers and the workers go with this process.
process.on('exit', () => {
  for (const w of workers) w.kill();
  for (const data of running)
    spawnSync(binPath('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], { ...asOwner, stdio: 'ignore' });
  redis.process.kill('SIGKILL');
  server.stopSync();
  fs.rmSync(dir, { recursive: true, force: true });
});
const stanza = await createStanza(server, pool, dir, {
  repoLines: [`repo1-path=${path.join(dir, 'pgbackrest', 'repo')}`, 'process-max=2'],
});

console.error(`seeding ${ROWS} orders, ${2 * ROWS} order lines…`);
await pool.query(`create schema sales;
  create table sales.partner (id int primary key, name text not null, city text not null);
  insert into sales.partner select g, 'partner ' || g, 'city ' || g % 97 from generate_series(1, 5000) g;
  create table sales.sale_order (id bigint primary key, partner_id int not null references sales.partner,
    state text not null, date_order timestamptz not null, amount_total numeric(12,2) not null, note text);
  create table sales.sale_order_line (id bigint primary key, order_id bigint not null, product_id int not null,
    qty numeric(10,2) not null, price_unit numeric(12,2) not null)`);
for (let from = 1; from <= ROWS; from += 500_000) {
  const to = Math.min(ROWS, from + 499_999);
  await pool.query(
    `insert into sales.sale_order
       select g, 1 + g % 5000, (array['draft','sale','sale','done','cancel'])[1 + g % 5],
       timestamptz '2024-11-01' + make_interval(secs => g * 7), round((50 + (g * 7919 % 500000) / 100.0)::numeric, 2),
       md5(g::text) from generate_series($1::bigint, $2::bigint) g`,
    [from, to],
  );
  await pool.query(
    `insert into sales.sale_order_line
       select g, (g + 1) / 2, 1 + g % 800, 1 + g % 12, round((1 + (g * 31 % 20000) / 100.0)::numeric, 2)
         from generate_series(2 * $1::bigint - 1, 2 * $2::bigint) g`,
    [from, to],
  );
}
await pool.query(`create index on sales.sale_order (date_order);
  create index on sales.sale_order (partner_id); create index on sales.sale_order_line (order_id);
`);
await pool.query('vacuum analyze');
await pool.query('checkpoint');
const { rows: sz } = await pool.query<{ mb: number }>(`select round(pg_database_size('dairy') / 1048576.0) as mb`);
console.error(`database: ${sz[0]!.mb} MB`);
const tables = ['sales.partner', 'sales.sale_order', 'sales.sale_order_line'];
const sourceRows = new Map<string, number>();
for (const t of tables)
  sourceRows.set(t, Number((await pool.query<{ n: string }>(`select count(*) as n from ${t}`)).rows[0]!.n));

/** One deployment: its own Redis prefix, backup directory and bucket prefix; encrypted or not. */
function deployment(name: string, encrypted: boolean) {
  const configFile = path.join(dir, `pgmaint-${name}.json`);
  fs.writeFileSync(
    configFile,
    JSON.stringify({
      redis: { prefix: `{pgmaint-${name}}` },
      targets: { main: { backup: { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile } } },
      backups: { scratchDir: path.join(dir, `scratch-${name}`) },
      objectStore: {
        bucket: s3.bucket,
        prefix: `${name}/`,
        endpoint: s3.endpoint,
        forcePathStyle: true,
        caFile: s3.caFile,
        accessKeyIdEnv: 'S3_KEY',
        secretAccessKeyEnv: 'S3_SECRET',
        keepLocal: false,
      },
      ...(encrypted ? { encryption: { keyId: 'bench', keyEnv: 'BACKUP_KEY' } } : {}),
    }),
  );
  return {
    ...process.env,
    S3_KEY: s3.accessKeyId,
    S3_SECRET: s3.secretAccessKey,
    BACKUP_KEY: randomBytes(32).toString('base64'),
    DATABASE_URL: server.url('dairy'),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, `backups-${name}`),
    PGMAINT_CONFIG: configFile,
    LOG_LEVEL: 'warn',
  };
}
const enc = deployment('enc', true);
const plain = deployment('plain', false);
workers.push(
  await startWorker(enc, [
    'noop',
    'backup',
    'restore-dump',
    ...(ONLY.has('cluster') ? ['base-backup', 'restore-cluster'] : []),
  ]),
);
workers.push(await startWorker(plain, ['backup', 'restore-dump']));

const rows: string[][] = [];

// What every pgmaint run here costs besides its work: the CLI's start, the enqueue, the
// worker's pick-up and the following to the result, measured on a job that does nothing.
const noop: Sample = { name: 'pgmaint enqueue noop --wait', ms: [] };
for (let r = 0; r < ROUNDS; r++) noop.ms.push((await cliJob(enc, 'noop', {})).ms);

/** Waits until a new connection to the server on `port` answers pg_is_in_recovery() = false. */
async function untilPromoted(host: string, port: number, deadlineMs = 30 * 60_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const c = new pg.Client({ host, port, user: 'postgres', database: 'dairy' });
    c.on('error', () => undefined);
    try {
      await c.connect();
      const { rows: r } = await c.query<{ r: boolean }>('select pg_is_in_recovery() as r');
      if (!r[0]!.r) return;
    } catch {
      // starting, or still replaying
    } finally {
      await c.end().catch(() => undefined);
    }
    if (Date.now() > deadline) throw new Error(`the server on port ${port} was not promoted in time`);
    await sleep(100);
  }
}

async function stopAndRemove(data: string): Promise<void> {
  running.delete(data);
  await runProcess(binPath('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], asOwner).catch(() => undefined);
  fs.rmSync(path.dirname(data), { recursive: true, force: true });
}

// 1. restore-cluster: the newest set to the end of the archive, promoted on a port.
if (ONLY.has('cluster')) {
  await cliJob(enc, 'base-backup', { type: 'full' });
  // WAL written after the set, which both sides replay.
  await pool.query(`update sales.sale_order set state = 'done' where id % 10 = 0`);
  const { rows: seg } = await pool.query<{ s: string }>('select pg_walfile_name(pg_switch_wal()) as s');
  for (let i = 0; ; i++) {
    const { rows: a } = await pool.query<{ w: string | null }>('select last_archived_wal as w from pg_stat_archiver');
    if (a[0]!.w && a[0]!.w.slice(8) >= seg[0]!.s.slice(8)) break;
    if (i > 600) throw new Error(`WAL segment ${seg[0]!.s} was not archived`);
    await sleep(100);
  }
  const fresh = (side: string, round: number) => {
    const data = path.join(dir, `cluster-${side}-${round}`, 'data');
    fs.mkdirSync(path.dirname(data), { recursive: true });
    if (owner) fs.chownSync(path.dirname(data), owner.uid, owner.gid);
    running.add(data);
    return data;
  };
  const cluster = await interleave(
    [
      {
        name: 'pgmaint restore-cluster',
        run: async (r) => {
          const into = fresh('pgmaint', r);
          const port = await freePort();
          const ms = await timed(async () => {
            await cliJob(enc, 'restore-cluster', { target: 'main', into, port, promote: true });
            await untilPromoted('127.0.0.1', port);
          });
          await stopAndRemove(into);
          return ms;
        },
      },
      {
        name: 'pgbackrest restore + start + promotion',
        run: async (r) => {
          const data = fresh('hand', r);
          const port = await freePort();
          const ms = await timed(async () => {
            await stanza.pgbackrest(['restore', `--pg1-path=${data}`]);
            const settings = [
              `port = ${port}`,
              "listen_addresses = '127.0.0.1'",
              `unix_socket_directories = '${path.dirname(data)}'`,
              'archive_mode = off',
            ];
            fs.appendFileSync(path.join(data, 'postgresql.auto.conf'), `\n${settings.join('\n')}\n`);
            const log = path.join(path.dirname(data), 'log');
            await runProcess(binPath('pg_ctl'), ['-D', data, '-l', log, '-w', '-t', '1800', 'start'], asOwner);
            await untilPromoted('127.0.0.1', port);
          });
          await stopAndRemove(data);
          return ms;
        },
      },
    ],
    ROUNDS,
    { alternate: true },
  );
  rows.push(verdictRow('restore-cluster, latest, local repo, process-max 2, to promoted (s)', cluster, '≤ 1.05×'));
}

// 2. restore-dump from the bucket: pgmaint encrypted and unencrypted, against the SDK download + pg_restore -j.
if (ONLY.has('dump')) {
  const encDump = await cliJob(enc, 'backup', {});
  const plainDump = await cliJob(plain, 'backup', {});
  const plainObject = new URL(plainDump.result.object as string);
  const plainKey = decodeURIComponent(plainObject.pathname.slice(1));
  const config = loadConfig(plain);
  const s3Client = s3ClientFor(config.objectStore!, configSecrets(config).s3);
  const head = await s3Client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: plainKey }));
  const plainBytes = Number(head.ContentLength);
  (head.Body as NodeJS.ReadableStream & { destroy(): void }).destroy();
  console.error(`dumps: ${encDump.result.object} and ${plainDump.result.object} (${plainBytes} bytes)`);
  const handDir = path.join(dir, 'scratch-hand');
  fs.mkdirSync(handDir, { recursive: true });
  const dropDatabase = (db: string) => pool.query(`drop database if exists ${db} with (force)`);

  // The hand side's download runs as a process of its own (as `aws s3 cp` would), not in this
  // process, which serves the bucket.
  const sdkGet = path.join(import.meta.dirname, 'sdk-get.ts');
  const s3Env = {
    S3_ENDPOINT: s3.endpoint,
    S3_CA_FILE: s3.caFile,
    S3_KEY: s3.accessKeyId,
    S3_SECRET: s3.secretAccessKey,
  };
  const byHand = async (db: string, checks: boolean) => {
    const file = path.join(handDir, `${db}.dump`);
    const ms = await timed(async () => {
      const get = ['--import', 'tsx', sdkGet, '--bucket', s3.bucket, '--key', plainKey, '--out', file];
      const { stdout } = await runProcess(process.execPath, checks ? [...get, '--sha256'] : get, {
        env: s3Env,
        cwd: path.join(import.meta.dirname, '..'),
      });
      if (checks && (await sha256File(file)) !== stdout.trim()) throw new Error('sha256 differs');
      await pool.query(`create database ${db} template template0`);
      await runProcess(
        binPath('pg_restore'),
        ['--no-owner', '--no-privileges', '--exit-on-error', '--no-password', `--jobs=${JOBS}`, `--dbname=${db}`, file],
        { libpq: { env: { PGHOST: '127.0.0.1', PGPORT: String(server.port), PGUSER: 'postgres', PGDATABASE: db } } },
      );
      if (checks) {
        const c = new pg.Client({ connectionString: server.url(db) });
        await c.connect();
        for (const t of tables) {
          const n = Number((await c.query<{ n: string }>(`select count(*) as n from ${t}`)).rows[0]!.n);
          if (n !== sourceRows.get(t)) throw new Error(`${t}: ${n} rows restored`);
        }
        await c.end();
      }
    });
    fs.rmSync(file, { force: true });
    await dropDatabase(db);
    return ms;
  };
  const ours = (env: NodeJS.ProcessEnv, db: string) => async () => {
    const ms = (await cliJob(env, 'restore-dump', { target: 'main', database: db, parallel: JOBS })).ms;
    await dropDatabase(db);
    return ms;
  };
  const dump = await interleave(
    [
      { name: 'pgmaint restore-dump, encrypted', run: (r) => ours(enc, `bench_enc_${r + 1}`)() },
      { name: 'SDK download + pg_restore', run: (r) => byHand(`bench_hand_${r + 1}`, false) },
      { name: 'pgmaint restore-dump, unencrypted', run: (r) => ours(plain, `bench_plain_${r + 1}`)() },
      { name: 'by hand + sha256 + row counts', run: (r) => byHand(`bench_checked_${r + 1}`, true) },
    ],
    ROUNDS,
    { alternate: true },
  );
  s3Client.destroy();
  const mb = (plainBytes / 1048576).toFixed(0);
  rows.push(
    verdictRow(`restore-dump ${mb} MB from the bucket, encrypted, -j ${JOBS} (s)`, [dump[0]!, dump[1]!], '≤ 1.1×'),
    verdictRow('  the same, unencrypted on both sides (s)', [dump[2]!, dump[1]!]),
    verdictRow('  encrypted, against the hand side with the same checks (s)', [dump[0]!, dump[3]!]),
  );
}

function verdictRow(what: string, [ours, theirs]: Sample[], target?: string): string[] {
  return [...row(what, ours!, theirs!, target), verdict(ours!, theirs!, target)];
}

printTable(
  `Restores, ${sz[0]!.mb} MB database, ${ROUNDS} interleaved rounds, medians (min–max); ` +
    `load average before ${loadBefore}, after ${loadAverage()}`,
  ['what', 'pgmaint', 'by hand', 'pgmaint / by hand', 'target', 'verdict'],
  rows,
);
console.log(`\nthe CLI's round trip of a no-op job (${noop.name}), in every pgmaint figure above: ${fmt(noop)}`);

for (const w of workers) await w.stop();
await pool.end();
await s3.stop();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
process.exit(0);
