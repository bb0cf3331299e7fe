// A throwaway PostgreSQL instance built from a base backup, for the PITR drill:
// its own directory, its own port, reachable only through a Unix socket in that
// directory, archive_mode off, and nothing in its configuration that points back
// at the live cluster's files. The backup engine's restore puts the data directory
// and its recovery settings in place; configure() isolates it. Stopped and deleted
// by destroy(), whatever happened.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { freePort, postgresUser, type OsOwner } from '../core/local-postgres.ts';
import { binPath, runProcess } from '../core/proc.ts';
import { processAlive } from '../core/pid.ts';
import { confString } from './restore-dir.ts';

const PREFIX = 'pgmaint-drill-';

/** Settings of the live cluster's config files that would point the scratch instance at live paths. */
export const LIVE_PATH_SETTINGS =
  /^\s*(data_directory|hba_file|ident_file|external_pid_file|include_dir|include_if_exists|include)\b/;

export interface ScratchInstance {
  dir: string;
  dataDir: string;
  socketDir: string;
  port: number;
  owner: OsOwner | undefined;
  logFile: string;
  started: boolean;
  /** Appends isolation settings (port, socket, archiving off, …); the restored data directory must be in place. */
  configure(settings: Record<string, string | number>): Promise<void>;
  /** Starts the server in the allow-listed environment (childEnv), with PGBACKREST_* when its restore_command
   * runs pgBackRest. */
  start(signal?: AbortSignal, opts?: { pgbackrestOptions?: boolean }): Promise<void>;
  log(): Promise<string>;
  running(): Promise<boolean>;
  client(user: string, database: string): pg.Client;
  /** Stops the server (immediate) and removes the directory. Never throws. */
  destroy(): Promise<void>;
}

/** Removes scratch directories of drills whose worker process is gone (a SIGKILLed drill). */
export async function removeAbandonedScratch(root: string, onRemoved: (dir: string) => Promise<void>): Promise<void> {
  for (const e of await fs.readdir(root).catch(() => [] as string[])) {
    if (!e.startsWith(PREFIX)) continue;
    const dir = path.join(root, e);
    const pid = Number(await fs.readFile(path.join(dir, 'worker.pid'), 'utf8').catch(() => '0'));
    if (pid && pid !== process.pid && processAlive(pid)) continue;
    const owner = postgresUser();
    await runProcess(binPath('pg_ctl'), ['-D', path.join(dir, 'data'), '-m', 'immediate', '-w', 'stop'], {
      ...owner,
    }).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
    await onRemoved(dir);
  }
}

export async function createScratchInstance(root = os.tmpdir()): Promise<ScratchInstance> {
  await fs.mkdir(root, { recursive: true });
  const dir = await fs.mkdtemp(path.join(root, PREFIX));
  await fs.writeFile(path.join(dir, 'worker.pid'), String(process.pid));
  const owner = postgresUser();
  const dataDir = path.join(dir, 'data');
  const socketDir = path.join(dir, 'sock');
  const logFile = path.join(dir, 'postgres.log');
  await fs.mkdir(socketDir);
  await fs.writeFile(logFile, '');
  if (owner) {
    for (const p of [dir, socketDir, logFile]) await fs.chown(p, owner.uid, owner.gid);
  }
  const port = await freePort();
  const asOwner = owner ? { uid: owner.uid, gid: owner.gid } : {};

  const inst: ScratchInstance = {
    dir,
    dataDir,
    socketDir,
    port,
    owner,
    logFile,
    started: false,
    async configure(settings) {
      const conf = path.join(dataDir, 'postgresql.conf');
      const text = await fs.readFile(conf, 'utf8').catch(() => '');
      const cleaned = text
        .split('\n')
        .map((l) => (LIVE_PATH_SETTINGS.test(l) ? `# pgmaint drill: disabled: ${l}` : l))
        .join('\n');
      await fs.writeFile(conf, cleaned);
      // Only this process's user reaches the socket directory; trust is safe there.
      await fs.writeFile(path.join(dataDir, 'pg_hba.conf'), 'local all all trust\n');
      await fs.writeFile(path.join(dataDir, 'pg_ident.conf'), '');
      const lines = Object.entries(settings).map(([k, v]) => `${k} = ${typeof v === 'number' ? v : confString(v)}`);
      await fs.appendFile(path.join(dataDir, 'postgresql.auto.conf'), `\n# pgmaint PITR drill\n${lines.join('\n')}\n`);
      await fs.rm(path.join(dataDir, 'postmaster.pid'), { force: true });
      if (owner) await runProcess('chown', ['-R', `${owner.uid}:${owner.gid}`, dataDir]);
    },
    async start(signal, opts = {}) {
      // -w returns once archive recovery has begun (status "standby" with hot_standby
      // off); the caller watches replay and promotion itself.
      inst.started = true;
      try {
        await runProcess(binPath('pg_ctl'), ['-D', dataDir, '-l', logFile, '-w', '-t', '300', 'start'], {
          ...asOwner,
          signal,
          cwd: '/',
          pgbackrestOptions: opts.pgbackrestOptions,
        });
      } catch (err) {
        const tail = (await inst.log()).trim().split('\n').slice(-5).join(' | ');
        throw new Error(`the scratch instance did not start: ${(err as Error).message}. Server log: ${tail}`, {
          cause: err,
        });
      }
    },
    log: () => fs.readFile(logFile, 'utf8').catch(() => ''),
    async running() {
      try {
        await runProcess(binPath('pg_ctl'), ['-D', dataDir, 'status'], { ...asOwner, cwd: '/' });
        return true;
      } catch {
        return false;
      }
    },
    client(user, database) {
      const c = new pg.Client({ host: socketDir, port, user, database, connectionTimeoutMillis: 3000 });
      c.on('error', () => undefined); // the instance is stopped under it on teardown
      return c;
    },
    async destroy() {
      if (inst.started) {
        await runProcess(binPath('pg_ctl'), ['-D', dataDir, '-m', 'immediate', '-w', '-t', '60', 'stop'], {
          ...asOwner,
          cwd: '/',
        }).catch(() => undefined);
        // pg_ctl stop can fail while the postmaster is still starting; make sure.
        for (let i = 0; i < 20 && (await inst.running()); i++) await sleep(250);
      }
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
  return inst;
}
