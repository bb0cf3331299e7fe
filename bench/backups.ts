// The backup jobs against pgBackRest on one cluster, on a demo database of about 1 GB
// (orders with an index; --rows to change the size), each pair interleaved for --rounds:
//   backup:      pgmaint custom format  vs  directory format with -j 2
//   base backup: pgmaint base-backup    vs  pgbackrest backup --type=full, both lz4 and two
//                processes (pg_basebackup streams WAL beside the copy; pgBackRest process-max=2);
//                pgBackRest's verify (ours always verifies) on a row of its own
//   restore:     pgmaint pitr-drill RTO vs  pgbackrest restore (process-max=2) + start to
//                promotion, both from the restore's start to promotion, to the same target time
// WAL goes to both archives (archive_command copies, then pgbackrest archive-push).
// Needs Debian's pgbackrest:  apt-get install -y pgbackrest
//   npm run bench:backups [-- --rows 9000000 --rounds 3]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { loadConfig } from '../src/core/config.ts';
import { createDatabase, startPostgres, startRedis } from '../src/dev/devstack.ts';
import { freePort } from '../src/core/local-postgres.ts';
import { createLogger } from '../src/core/logger.ts';
import { binPath, runProcess } from '../src/core/proc.ts';
import { startWorkers } from '../src/cli/roles.ts';
import { jobRunner } from './run-job.ts';
import { fmt, interleave, loadAverage, median, printTable, row, type Sample } from './method.ts';
import { pgbackrestWorkdir } from './workdir.ts';
import { createRuntime } from '../src/pgmaint.ts';

const { values } = parseArgs({
  options: { rows: { type: 'string', default: '9000000' }, rounds: { type: 'string', default: '3' } },
});
const ROWS = Number(values.rows);
const ROUNDS = Math.max(3, Number(values.rounds));
const { dir, owner, asOwner } = pgbackrestWorkdir('backups');
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
      'process-max=2',
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
console.log(`load average before: ${loadAverage()}`);

console.error('logical dumps…');
const dumpBytes = { custom: 0, directory: 0 };
const [custom, directory] = await interleave(
  [
    {
      name: 'backup custom',
      run: async () => {
        const r = await job('backup', { format: 'custom' });
        dumpBytes.custom = r.result.bytes;
        return r.ms;
      },
    },
    {
      name: 'backup directory -j 2',
      run: async () => {
        const r = await job('backup', { format: 'directory', parallel: 2 });
        dumpBytes.directory = r.result.bytes;
        return r.ms;
      },
    },
  ],
  ROUNDS,
);

console.error('base backups…');
const copy: Sample = { name: 'copying', ms: [] };
const verifyOurs: Sample = { name: 'verification', ms: [] };
const verifyTheirs: Sample = { name: 'pgbackrest verify', ms: [] };
const sizes = { ours: 0, theirs: 0 };
const [base, pgbrBackup] = await interleave(
  [
    {
      name: 'base-backup lz4',
      run: async () => {
        const r = await job('base-backup', { compression: 'lz4' });
        copy.ms.push(Date.parse(r.result.stoppedAt) - Date.parse(r.result.startedAt));
        verifyOurs.ms.push(r.result.verifySeconds * 1000);
        sizes.ours = r.result.bytes;
        return r.ms;
      },
    },
    {
      name: 'pgbackrest backup --type=full lz4',
      run: async () => {
        const before = du(path.join(repo, 'repo', 'backup'));
        const ms = await timed(() => pgbackrest(['backup', '--type=full']));
        sizes.theirs = du(path.join(repo, 'repo', 'backup')) - before;
        verifyTheirs.ms.push(await timed(() => pgbackrest(['verify'])));
        return ms;
      },
    },
  ],
  ROUNDS,
);

console.error('restores…');
await db.query(
  `insert into sales.sale_order select g, 1, 1, 'sale', now(), 1, null from generate_series($1::bigint, $1::bigint ` +
    `+ 999) g`,
  [ROWS + 1],
);
const restoreDir = path.join(dir, 'pgbr-restore');
const runDir = path.join(dir, 'pgbr-run'); // socket and log, written by the server's OS user
let lastDrill: Record<string, any> = {};
const parts = { restore: [] as number[], verify: [] as number[], replay: [] as number[] };
const theirParts = { restore: [] as number[], replay: [] as number[] };
const [drillRto, pgbrRestore] = await interleave(
  [
    {
      name: 'pitr-drill RTO',
      run: async () => {
        lastDrill = (await job('pitr-drill', {})).result;
        // restoreSeconds runs to the server's start: the unpacking and the verification.
        parts.restore.push((lastDrill.restoreSeconds - lastDrill.verifySeconds) * 1000);
        parts.verify.push(lastDrill.verifySeconds * 1000);
        parts.replay.push(lastDrill.replaySeconds * 1000);
        return lastDrill.rtoSeconds * 1000;
      },
    },
    {
      name: 'pgbackrest restore + promotion',
      run: async () => {
        for (const d of [restoreDir, runDir]) {
          fs.rmSync(d, { recursive: true, force: true });
          fs.mkdirSync(d, { mode: 0o700 });
          if (owner) fs.chownSync(d, owner.uid, owner.gid);
        }
        const port = await freePort();
        // To the last drill's target time, so both replay the same WAL.
        const target = String(lastDrill.targetTime).replace('T', ' ').replace('Z', '+00');
        const t0 = performance.now();
        await pgbackrest([
          'restore',
          `--pg1-path=${restoreDir}`,
          '--type=time',
          `--target=${target}`,
          '--target-action=promote',
          '--archive-mode=off',
        ]);
        const restored = performance.now();
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
        const ms = performance.now() - t0;
        theirParts.restore.push(restored - t0);
        theirParts.replay.push(performance.now() - restored);
        await runProcess(binPath('pg_ctl'), ['-D', restoreDir, '-m', 'immediate', 'stop'], {
          ...asOwner,
          cwd: '/',
        }).catch(() => undefined);
        return ms;
      },
    },
  ],
  ROUNDS,
);

const mb = (b: number) => String(Math.round(b / 1048576));
const one = (label: string, sample: Sample) => [label, fmt(sample), '', '', ''];
const sum = (...xs: Sample[]): Sample => ({
  name: 'sum',
  ms: xs[0]!.ms.map((_, i) => xs.reduce((a, x) => a + x.ms[i]!, 0)),
});
console.log(
  `database ${sz[0]!.mb} MB, ${ROWS} order rows; dumps: custom ${mb(dumpBytes.custom)} MB, directory ` +
    `${mb(dumpBytes.directory)} MB; base backup on disk: ours ${mb(sizes.ours)} MB, pgBackRest ${mb(sizes.theirs)} MB`,
);
printTable(
  `backups against pgBackRest, ${ROUNDS} rounds interleaved; median (min–max)`,
  ['', 'pgmaint', 'baseline', 'ratio', 'target'],
  [
    row('backup: directory -j 2 vs custom (s)', directory!, custom!),
    row('base backup lz4, whole job vs pgbackrest backup (s)', base!, pgbrBackup!),
    row('  the same, vs pgbackrest backup + verify (s)', base!, sum(pgbrBackup!, verifyTheirs)),
    one('  ours: copying (s)', copy),
    one('  ours: verification (pg_verifybackup, tar unpacked) (s)', verifyOurs),
    one('  pgBackRest: verify, extra (s)', verifyTheirs),
    row('restore to promotion: drill RTO vs pgbackrest restore + start (s)', drillRto!, pgbrRestore!, '≤ 1.0×'),
    row(
      '  restore: drill unpacking vs pgbackrest restore (s)',
      { name: 'r', ms: parts.restore },
      {
        name: 'r',
        ms: theirParts.restore,
      },
    ),
    one('  drill: verify the restored files (pg_verifybackup), extra (s)', { name: 'v', ms: parts.verify }),
    row('  start and replay to promotion (s)', { name: 'p', ms: parts.replay }, { name: 'p', ms: theirParts.replay }),
  ],
);
const ratio = median(drillRto!.ms) / median(pgbrRestore!.ms);
console.log(
  `target: drill RTO ≤ 1.0× pgbackrest restore to promotion — ${ratio <= 1 ? 'met' : 'NOT met'} (${ratio.toFixed(2)}×)`,
);
console.log(`load average after: ${loadAverage()}`);

await db.end();
await job.close();
await rt.close();
await redis.stop();
await server.stop('immediate');
fs.rmSync(dir, { recursive: true, force: true });
