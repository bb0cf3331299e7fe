// The backup jobs against pgBackRest on one cluster, in one run, on a demo database
// of about 1 GB (orders with an index; --rows to change the size):
//   backup:      pgmaint custom format  vs  directory format with -j 2
//   base backup: pgmaint base-backup    vs  pgbackrest backup --type=full   (lz4 and gzip, single process)
//   restore:     pgmaint pitr-drill RTO vs  pgbackrest restore + start to promotion
// WAL goes to both archives (archive_command copies, then pgbackrest archive-push).
// Needs Debian's pgbackrest:  apt-get install -y pgbackrest
//   npm run bench:backups [-- --rows 9000000]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { loadConfig } from '../src/core/config.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { freePort, postgresUser } from '../src/core/local-postgres.ts';
import { createLogger } from '../src/core/logger.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { jobRunner } from './run-job.ts';
import { createRuntime } from '../src/pgmaint.ts';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '9000000' } } });
const ROWS = Number(values.rows);
if (spawnSync('pgbackrest', ['version']).status !== 0) {
  console.error('pgBackRest is not installed: apt-get install -y pgbackrest');
  process.exit(2);
}

const owner = postgresUser();
const asOwner = owner ? { uid: owner.uid, gid: owner.gid } : {};
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-bench-backups-'));
fs.chmodSync(dir, 0o755);
const repo = path.join(dir, 'pgbackrest');
for (const d of ['repo', 'log', 'lock']) fs.mkdirSync(path.join(repo, d), { recursive: true });
if (owner) spawnSync('chown', ['-R', `${owner.uid}:${owner.gid}`, repo]);
const pgbrConf = path.join(repo, 'pgbackrest.conf');
const pgDir = path.join(dir, 'pg');
const archiveDir = path.join(pgDir, 'wal-archive');

const server = await startPostgres({
  dir: pgDir,
  settings: {
    archive_command:
      `'test ! -f ${archiveDir}/%f && cp %p ${archiveDir}/%f && pgbackrest --config=${pgbrConf} ` +
      `--stanza=bench archive-push %p'`,
    max_wal_size: "'4GB'",
    // The bench measures backup and restore, not a crash-unsafe load: keep it durable.
    fsync: 'on',
  },
});
const redis = await startRedis({ dir: path.join(dir, 'redis') });
await createDatabase(server, 'dairy');

function writePgbrConf(compressType: 'lz4' | 'gz') {
  fs.writeFileSync(
    pgbrConf,
    [
      '[global]',
      `repo1-path=${repo}/repo`,
      `log-path=${repo}/log`,
      `lock-path=${repo}/lock`,
      'log-level-console=warn',
      'start-fast=y',
      'process-max=1',
      `compress-type=${compressType}`,
      'repo1-retention-full=10',
      '',
      '[bench]',
      `pg1-path=${server.dataDir}`,
      `pg1-port=${server.port}`,
      `pg1-socket-path=${server.socketDir}`,
      'pg1-user=postgres',
      '',
    ].join('\n'),
  );
  fs.chmodSync(pgbrConf, 0o644);
}
writePgbrConf('lz4');
const pgbackrest = (args: string[]) =>
  runProcess('pgbackrest', [`--config=${pgbrConf}`, '--stanza=bench', ...args], { ...asOwner, cwd: '/' });
await pgbackrest(['stanza-create']);

console.error(`seeding ${ROWS} order rows…`);
const db = new pg.Client({ connectionString: server.url('dairy') });
await db.connect();
await db.query(`create schema sales;
  create table sales.sale_order (id bigint primary key, company_id int not null, partner_id int not null,
    state text not null,
    date_order timestamptz not null, amount_total numeric(12,2) not null, note text)`);
for (let from = 1; from <= ROWS; from += 1_000_000) {
  const to = Math.min(ROWS, from + 999_999);
  await db.query(
    `insert into sales.sale_order select g, 1 + g % 3, 1 + g % 5000,
      (array['draft','sale','sale','done','cancel'])[1 + g % 5],
    timestamptz '2024-11-01' + make_interval(secs => g * 7), round((50 + (g * 7919 % 500000) / 100.0)::numeric, 2),
      'order ' || g from generate_series($1::bigint, $2::bigint) g`,
    [from, to],
  );
}
await db.query('checkpoint');
const { rows: sz } = await db.query<{ mb: number }>(`select round(pg_database_size('dairy') / 1048576.0) as mb`);
console.error(`database: ${sz[0]!.mb} MB`);

const configFile = path.join(dir, 'pgmaint.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({ backups: { drillTables: ['sales.sale_order'], scratchDir: path.join(dir, 'scratch') } }),
);
const config = loadConfig({
  DATABASE_URL: server.url('dairy'),
  REDIS_URL: redis.url,
  BACKUP_DIR: path.join(dir, 'backups'),
  WAL_ARCHIVE_DIR: archiveDir,
  PGMAINT_CONFIG: configFile,
});
const rt = createRuntime({ config, logger: createLogger('warn'), schedules: [] });
await rt.history.migrate();
startWorkers(rt, ['backup', 'base-backup', 'pitr-drill']);
const job = jobRunner(rt);
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}
const du = (p: string) => Number(spawnSync('du', ['-sb', p]).stdout.toString().split('\t')[0]);

console.error('logical dumps…');
const custom = await job('backup', { format: 'custom' });
const directory = await job('backup', { format: 'directory', parallel: 2 });

console.error('base backups…');
const ours: Record<string, { ms: number; result: Record<string, any> }> = {};
const theirs: Record<string, { ms: number; bytes: number }> = {};
for (const [ourCompression, theirCompression] of [
  ['lz4', 'lz4'],
  ['gzip', 'gz'],
] as const) {
  ours[ourCompression] = await job('base-backup', { compression: ourCompression });
  writePgbrConf(theirCompression);
  const before = du(path.join(repo, 'repo', 'backup'));
  const ms = await timed(() => pgbackrest(['backup', '--type=full']));
  theirs[ourCompression] = { ms, bytes: du(path.join(repo, 'repo', 'backup')) - before };
}

console.error('restores…');
// Ours: the drill restores the newest base backup (gzip) and replays to T.
await db.query(
  `insert into sales.sale_order select g, 1, 1, 'sale', now(), 1, null from generate_series($1::bigint, $1::bigint ` +
    `+ 999) g`,
  [ROWS + 1],
);
const drill = await job('pitr-drill', {});
// Theirs: restore the newest backup (gzip) into a fresh directory, start it, wait for promotion.
const restoreDir = path.join(dir, 'pgbr-restore');
fs.mkdirSync(restoreDir, { mode: 0o700 });
if (owner) fs.chownSync(restoreDir, owner.uid, owner.gid);
const runDir = path.join(dir, 'pgbr-run'); // socket and log, written by the server's OS user
fs.mkdirSync(runDir);
if (owner) fs.chownSync(runDir, owner.uid, owner.gid);
const port = await freePort();
const restoreStart = performance.now();
// To the drill's own target time, so both replay the same WAL.
const target = String(drill.result.targetTime).replace('T', ' ').replace('Z', '+00');
await pgbackrest([
  'restore',
  `--pg1-path=${restoreDir}`,
  '--type=time',
  `--target=${target}`,
  '--target-action=promote',
  '--archive-mode=off',
]);
fs.appendFileSync(
  path.join(restoreDir, 'postgresql.auto.conf'),
  `\nport = ${port}\nunix_socket_directories = '${runDir}'\nlisten_addresses = ''\nhot_standby = off\n`,
);
await runProcess(
  binPath('pg_ctl'),
  ['-D', restoreDir, '-l', path.join(runDir, 'postgres.log'), '-w', '-t', '600', 'start'],
  { ...asOwner, cwd: '/' },
);
for (;;) {
  const c = new pg.Client({ host: runDir, port, user: 'postgres', database: 'dairy' });
  c.on('error', () => undefined);
  const promoted = await c.connect().then(
    () => c.query('select not pg_is_in_recovery() as p').then((r) => r.rows[0].p as boolean),
    () => false,
  );
  await c.end().catch(() => undefined);
  if (promoted) break;
  await sleep(100);
}
const theirRestoreMs = performance.now() - restoreStart;
await runProcess(binPath('pg_ctl'), ['-D', restoreDir, '-m', 'immediate', 'stop'], { ...asOwner, cwd: '/' }).catch(
  () => undefined,
);

const s = (ms: number) => (ms / 1000).toFixed(1);
const mb = (b: number) => String(Math.round(b / 1048576));
const copyMs = (r: Record<string, any>) => Date.parse(r.stoppedAt) - Date.parse(r.startedAt);
const rows = [
  ['', 'baseline', 'pgmaint', 'ratio'],
  [
    `backup: custom (baseline) vs directory -j 2 (s)`,
    s(custom.ms),
    s(directory.ms),
    `${(directory.ms / custom.ms).toFixed(2)}×`,
  ],
  ...(['lz4', 'gzip'] as const).flatMap((c) => [
    [
      `base backup ${c}: pgbackrest full vs base-backup, whole job (s)`,
      s(theirs[c]!.ms),
      s(ours[c]!.ms),
      `${(ours[c]!.ms / theirs[c]!.ms).toFixed(2)}×`,
    ],
    [
      `  of which copying; verification after (s)`,
      '',
      `${s(copyMs(ours[c]!.result))}; ${ours[c]!.result.verifySeconds.toFixed(1)}`,
      `${(copyMs(ours[c]!.result) / theirs[c]!.ms).toFixed(2)}×`,
    ],
    [
      `  size on disk (MB)`,
      mb(theirs[c]!.bytes),
      mb(ours[c]!.result.bytes),
      `${(ours[c]!.result.bytes / theirs[c]!.bytes).toFixed(2)}×`,
    ],
  ]),
  [
    `restore to promotion: pgbackrest restore vs drill RTO (s)`,
    s(theirRestoreMs),
    drill.result.rtoSeconds.toFixed(1),
    `${((drill.result.rtoSeconds * 1000) / theirRestoreMs).toFixed(2)}×`,
  ],
  [
    `  drill: restore; verify; replay (s)`,
    '',
    `${drill.result.restoreSeconds.toFixed(1)}; ${drill.result.verifySeconds.toFixed(1)}; ` +
      `${drill.result.replaySeconds.toFixed(1)}`,
    '',
  ],
];
console.log(
  `database ${sz[0]!.mb} MB, ${ROWS} order rows; dumps: custom ${mb(custom.result.bytes)} MB, directory ` +
    `${mb(directory.result.bytes)} MB`,
);
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const r of rows)
  console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
const worst = Math.max(...(['lz4', 'gzip'] as const).map((c) => ours[c]!.ms / theirs[c]!.ms));
console.log(
  `targets: base backup within 1.2× of pgBackRest (whole job, verification included) — ` +
    `${worst <= 1.2 ? 'met' : 'NOT met'} (worst ${worst.toFixed(2)}×); drill RTO under 60 s — ` +
    `${drill.result.rtoSeconds < 60 ? 'met' : 'NOT met'} (${drill.result.rtoSeconds.toFixed(1)} s)`,
);

await db.end();
await job.close();
await rt.close();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
