// What `pgmaint demo` settles before it starts anything: that no other demo runs in its
// directory (a lock file with the demo's PID), and which configuration files it runs with.
import fs from 'node:fs';
import path from 'node:path';
import { type Config, loadConfig } from '../core/config.ts';
import { ConfigError, UsageError } from '../core/errors.ts';
import { isRunning, readPidFile } from './processes.ts';

/** The demo's configuration, the same file docker-compose.yml mounts. */
export const DEMO_CONFIG_FILE = path.resolve(import.meta.dirname, '../../docker/pgmaint.yaml');

/** The file `--offsite` lays over DEMO_CONFIG_FILE (its bucket, stanza and key). */
export const offsiteConfigFile = (dir: string) => path.join(dir, 'pgmaint-offsite.json');

const isDemo = (args: string[]) => args.includes('demo');

/**
 * Takes the demo directory for this process: refused (exit 2) while the demo whose PID
 * is in `<dir>/demo.pid` still runs; a lock left by a demo that is gone is taken over.
 * The lock is released when this process exits, however it exits.
 */
export function claimDemoDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const lock = path.join(dir, 'demo.pid');
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(lock, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    const holder = readPidFile(lock);
    if (holder !== undefined && holder !== process.pid && isRunning(holder, isDemo)) {
      throw new UsageError(
        `demo: the demo directory ${dir} is in use by PID ${holder} (a demo still running); stop that one ` +
          `(Ctrl-C where it runs, or kill ${holder}), or give this one a directory of its own with --dir DIR`,
      );
    }
    // A demo that was killed left its lock: taken over.
    fs.rmSync(lock, { force: true });
  }
  process.on('exit', () => {
    if (readPidFile(lock) === process.pid) fs.rmSync(lock, { force: true });
  });
}

/**
 * The configuration files the demo runs with: its own (DEMO_CONFIG_FILE, then with
 * --offsite the off-site file it writes), then the files in PGMAINT_CONFIG laid over
 * them, minus the demo's own (a shell that sourced an earlier demo's env.sh names them).
 * Those files are checked now (with `check` for what the config module cannot judge: jobs,
 * schedules), before anything starts: a mistake in them is exit 2.
 */
export function demoConfigFiles(
  dir: string,
  check: (config: Config) => void = () => undefined,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  const own = new Set([DEMO_CONFIG_FILE, offsiteConfigFile(dir)]);
  const user = (env.PGMAINT_CONFIG ?? '')
    .split(',')
    .map((f) => f.trim())
    .filter((f) => f && !own.has(path.resolve(f)))
    .map((f) => path.resolve(f));
  if (!user.length) return [];
  // The demo sets these itself; stand-ins let the files be checked on their own.
  const token = 'demo-check-0123456789abcdef';
  try {
    const config = loadConfig({
      ...env,
      DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/dairy',
      REDIS_URL: 'redis://127.0.0.1:6379',
      BACKUP_DIR: path.join(dir, 'backups'),
      WAL_ARCHIVE_DIR: '',
      ADMIN_TOKEN: token,
      VIEWER_TOKEN: token,
      PORT: '0',
      PGMAINT_CONFIG: [DEMO_CONFIG_FILE, ...user].join(','),
    });
    check(config);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError(`demo: PGMAINT_CONFIG is laid over the demo's ${DEMO_CONFIG_FILE}: ${err.message}`);
  }
  return user;
}
