// Throwaway services on free ports, from the binaries on this machine: a PostgreSQL
// cluster (initdb, WAL archiving on) and a redis-server. Used by the tests, the
// benchmarks and `pgmaint demo`. PostgreSQL refuses to run as root, so when we are
// root the server runs as the `postgres` system user.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chownTree, freePort, postgresUser, runAs } from '../core/local-postgres.ts';
import { binPath, childEnv, runProcess } from '../core/proc.ts';
import { isRunning, readPidFile, waitUntilGone } from './processes.ts';

export { freePort } from '../core/local-postgres.ts';

export interface PostgresInstance {
  port: number;
  dataDir: string;
  walArchiveDir: string;
  socketDir: string;
  /** Superuser URL (trust auth on loopback; the cluster is throwaway). */
  url(database?: string): string;
  /**
   * Stops the server: `mode` given STOP_GRACE_SECONDS, then an immediate shutdown (an
   * archive_command that hangs must not keep it running); rejects, naming the command
   * that stops it, only if it still runs after that.
   */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** An immediate shutdown that blocks: for a process's exit handler. */
  stopSync(): void;
  start(): Promise<void>;
  /** Runs as the cluster's OS user (pg_ctl, pg_basebackup into its dirs). */
  asOwner: { uid: number; gid: number } | undefined;
}

export interface PostgresOptions {
  /** Base directory; data/, wal-archive/ and sock/ are created in it. */
  dir: string;
  port?: number;
  /** Extra postgresql.conf lines. */
  settings?: Record<string, string | number>;
  /** initdb --data-checksums (a new cluster only). */
  dataChecksums?: boolean;
  /** Settings an earlier run set with ALTER SYSTEM, dropped from postgresql.auto.conf before each start. */
  resetAlterSystem?: string[];
  /** Says what was done about an earlier run's leftovers, and about a shutdown that had to be forced. */
  log?: (message: string) => void;
}

/** How long a fast shutdown may take before it is made immediate. */
export const STOP_GRACE_SECONDS = 15;

export async function startPostgres(opts: PostgresOptions): Promise<PostgresInstance> {
  const owner = postgresUser();
  const port = opts.port ?? (await freePort());
  // Absolute: pg_ctl runs from /, and a leftover server is recognised by this path in its command line.
  const dataDir = path.resolve(opts.dir, 'data');
  const walArchiveDir = path.join(opts.dir, 'wal-archive');
  const socketDir = path.join(opts.dir, 'sock');
  fs.mkdirSync(opts.dir, { recursive: true });
  fs.chmodSync(opts.dir, 0o755);
  for (const d of [walArchiveDir, socketDir]) fs.mkdirSync(d, { recursive: true });
  chownTree(walArchiveDir, owner);
  chownTree(socketDir, owner);
  const spawnOpts = owner ? { uid: owner.uid, gid: owner.gid } : {};

  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    chownTree(dataDir, owner);
    await runAs(
      binPath('initdb'),
      [
        ...['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C.UTF-8', '--no-sync'],
        ...(opts.dataChecksums ? ['--data-checksums'] : []),
      ],
      spawnOpts,
    );
    const settings: Record<string, string | number> = {
      listen_addresses: "'127.0.0.1'",
      port,
      unix_socket_directories: `'${socketDir}'`,
      wal_level: 'replica',
      archive_mode: 'on',
      // Never overwrite a segment already archived: a second copy would hide a fork.
      archive_command: `'test ! -f ${walArchiveDir}/%f && cp %p ${walArchiveDir}/%f'`,
      archive_timeout: 60,
      max_wal_senders: 4,
      max_connections: 100,
      shared_buffers: "'128MB'",
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'on',
      log_min_messages: 'warning',
      // query-stats-snapshot reads it, as the ERP's slow-query monitoring does.
      shared_preload_libraries: "'pg_stat_statements'",
      logging_collector: 'off',
      ...opts.settings,
    };
    fs.appendFileSync(
      path.join(dataDir, 'postgresql.conf'),
      '\n# pgmaint devstack\n' +
        Object.entries(settings)
          .map(([k, v]) => `${k} = ${v}`)
          .join('\n') +
        '\n',
    );
    chownTree(dataDir, owner);
  }

  const instance: PostgresInstance = {
    port,
    dataDir,
    walArchiveDir,
    socketDir,
    asOwner: owner,
    url: (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    start: () =>
      runAs(
        binPath('pg_ctl'),
        ['-D', dataDir, '-l', path.join(opts.dir, 'postgres.log'), '-w', '-t', '60', '-o', `-p ${port}`, 'start'],
        spawnOpts,
      ).then(() => undefined),
    stop: async (mode = 'fast') => {
      const pgCtlStop = (m: string) =>
        runAs(binPath('pg_ctl'), ['-D', dataDir, '-m', m, '-w', '-t', String(STOP_GRACE_SECONDS), 'stop'], spawnOpts)
          .then(() => undefined)
          .catch(() => undefined);
      await pgCtlStop(mode);
      if (!postmasterRunning(dataDir) || mode === 'immediate') return assertStopped(dataDir);
      opts.log?.(`PostgreSQL did not stop within ${STOP_GRACE_SECONDS} s (${mode}); stopping it immediately`);
      await pgCtlStop('immediate');
      assertStopped(dataDir);
    },
    stopSync: () => {
      if (postmasterRunning(dataDir))
        spawnSync(binPath('pg_ctl'), ['-D', dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop'], {
          ...spawnOpts,
          env: childEnv({}, spawnOpts),
          stdio: 'ignore',
          cwd: '/',
        });
    },
  };
  clearLeftoverServer(dataDir, opts.log);
  if (postmasterRunning(dataDir)) {
    opts.log?.(`stopping the PostgreSQL an earlier run left running in ${dataDir} (PID ${postmasterPid(dataDir)})`);
    await instance.stop('fast');
  }
  if (opts.resetAlterSystem?.length) resetAlterSystem(dataDir, opts.resetAlterSystem);
  fs.writeFileSync(path.join(opts.dir, 'postgres.log'), '');
  chownTree(path.join(opts.dir, 'postgres.log'), owner);
  await instance.start();
  return instance;
}

const postmasterPid = (dataDir: string) => readPidFile(path.join(dataDir, 'postmaster.pid'));

/** Whether postmaster.pid names a live PostgreSQL server of this data directory. */
function postmasterRunning(dataDir: string): boolean {
  const pid = postmasterPid(dataDir);
  return (
    pid !== undefined &&
    isRunning(pid, (args) => path.basename(args[0]!) === 'postgres' && args.some((a) => path.resolve(a) === dataDir))
  );
}

/** A postmaster.pid whose PID is gone, or has since been given to another process, is removed. */
function clearLeftoverServer(dataDir: string, log?: (message: string) => void): void {
  const file = path.join(dataDir, 'postmaster.pid');
  if (!fs.existsSync(file) || postmasterRunning(dataDir)) return;
  const pid = postmasterPid(dataDir);
  log?.(`removing a stale ${file} (PID ${pid ?? '?'} is no PostgreSQL of this directory)`);
  fs.rmSync(file, { force: true });
}

function assertStopped(dataDir: string): void {
  if (postmasterRunning(dataDir))
    throw new Error(
      `PostgreSQL in ${dataDir} (PID ${postmasterPid(dataDir)}) does not stop; stop it with: ` +
        `${binPath('pg_ctl')} -D ${dataDir} stop -m immediate${postgresUser() ? ' (as the postgres user)' : ''}`,
    );
}

/**
 * Drops settings from postgresql.auto.conf (what ALTER SYSTEM wrote) while the server is
 * down, so postgresql.conf's values hold again from the start, before the archiver runs.
 */
function resetAlterSystem(dataDir: string, names: string[]): void {
  const file = path.join(dataDir, 'postgresql.auto.conf');
  if (!fs.existsSync(file)) return;
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const kept = lines.filter((l) => !names.includes(/^\s*([A-Za-z_.]+)\s*=/.exec(l)?.[1]?.toLowerCase() ?? ''));
  // Rewritten in place, so the file keeps its owner.
  if (kept.length !== lines.length) fs.writeFileSync(file, kept.join('\n'));
}

export interface RedisInstance {
  port: number;
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export async function startRedis(opts: {
  dir: string;
  port?: number;
  appendonly?: boolean;
  /** More redis-server options, e.g. ['--cluster-enabled', 'yes']. */
  extraArgs?: string[];
  log?: (message: string) => void;
}): Promise<RedisInstance> {
  const port = opts.port ?? (await freePort());
  fs.mkdirSync(opts.dir, { recursive: true });
  // A server left running by an earlier, killed run in this directory is stopped first (when the
  // PID in its pid file is still a redis-server: the number may belong to another process by now).
  const pidFile = path.join(opts.dir, 'redis.pid');
  const leftover = readPidFile(pidFile);
  const isRedis = (args: string[]) => args.join(' ').includes('redis-server');
  if (leftover !== undefined && isRunning(leftover, isRedis)) {
    opts.log?.(`stopping the Redis an earlier run left running in ${opts.dir} (PID ${leftover})`);
    process.kill(leftover, 'SIGTERM');
    if (!(await waitUntilGone(() => !isRunning(leftover, isRedis), 10_000))) process.kill(leftover, 'SIGKILL');
  }
  fs.rmSync(pidFile, { force: true });
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--pidfile',
      pidFile,
      '--bind',
      '127.0.0.1',
      '--dir',
      opts.dir,
      '--save',
      '',
      '--appendonly',
      opts.appendonly ? 'yes' : 'no',
      '--maxmemory-policy',
      'noeviction',
      '--logfile',
      path.join(opts.dir, 'redis.log'),
      ...(opts.extraArgs ?? []),
    ],
    { stdio: 'ignore', env: childEnv() },
  );
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.write('PING\r\n');
      });
      sock.on('data', (d) => {
        sock.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      sock.on('error', () => resolve(false));
    });
    if (ok) break;
    if (child.exitCode !== null)
      throw new Error(`redis-server exited with ${child.exitCode}; see ${opts.dir}/redis.log`);
    await sleep(50);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    process: child,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      // AOF is flushed on SIGTERM within moments; a Redis that hangs is killed.
      const stopped = await Promise.race([exited.then(() => true), sleep(10_000, false, { ref: false })]);
      if (!stopped) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** Creates a database if it does not exist (psql through the superuser URL). */
export async function createDatabase(pg: PostgresInstance, name: string): Promise<void> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`database name "${name}" is not a plain identifier`);
  const exists = await runProcess(binPath('psql'), [
    '-XAtq',
    '-d',
    pg.url(),
    '-c',
    `select 1 from pg_database where datname = '${name}'`,
  ]);
  if (exists.stdout.trim() !== '1')
    await runProcess(binPath('psql'), ['-Xq', '-d', pg.url(), '-c', `create database "${name}"`]);
}
