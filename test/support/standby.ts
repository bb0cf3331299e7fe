// A streaming standby of a test's own cluster (pg_basebackup -R) on a port of its own,
// for the governor's replica-lag tests: its replay can be paused and resumed.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { chownTree, freePort, runAs } from '../../src/core/local-postgres.ts';
import { binPath } from '../../src/core/proc.ts';
import type { PostgresInstance } from '../../src/dev/devstack.ts';

export interface Standby {
  port: number;
  pool: pg.Pool;
  pauseReplay(): Promise<void>;
  resumeReplay(): Promise<void>;
  stop(): Promise<void>;
}

export async function startStandby(primary: PostgresInstance, dir: string): Promise<Standby> {
  const owner = primary.asOwner;
  const ids = owner ?? {};
  const port = await freePort();
  const dataDir = path.join(dir, 'data');
  const socketDir = path.join(dir, 'sock');
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(socketDir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'postgres.log'), '');
  chownTree(dir, owner);
  await runAs(
    binPath('pg_basebackup'),
    ['-D', dataDir, '-R', '--wal-method=stream', '--checkpoint=fast', '-d', primary.url('postgres')],
    ids,
  );
  const ctl = (...args: string[]) => runAs(binPath('pg_ctl'), ['-D', dataDir, ...args], ids);
  const options = `-p ${port} -c archive_mode=off -c unix_socket_directories=${socketDir} -c hot_standby=on`;
  await ctl('-l', path.join(dir, 'postgres.log'), '-w', '-t', '60', '-o', options, 'start');
  const pool = new pg.Pool({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`, max: 2 });
  return {
    port,
    pool,
    pauseReplay: async () => {
      await pool.query('select pg_wal_replay_pause()');
    },
    resumeReplay: async () => {
      await pool.query('select pg_wal_replay_resume()');
    },
    stop: async () => {
      await pool.end();
      await ctl('-m', 'immediate', '-w', 'stop').catch(() => undefined);
    },
  };
}
