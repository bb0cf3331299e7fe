// Per-test-file isolation on the shared services: a fresh database, a Redis key
// prefix of its own, a backup directory, and helpers to build runtimes and to run
// pgmaint as real child processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Job, Queue } from 'bullmq';
import pg from 'pg';
import { inject } from 'vitest';
import { loadConfig } from '../../src/core/config.ts';
import { createDatabase, startPostgres, type PostgresInstance } from '../../src/dev/devstack.ts';
import { createLogger } from '../../src/core/logger.ts';
import type { Runtime, RuntimeOptions } from '../../src/runner/runtime.ts';
import { createRuntime } from '../../src/pgmaint.ts';

export const ADMIN_TOKEN = 'admin-token-for-tests-0123456789';
export const VIEWER_TOKEN = 'viewer-token-for-tests-012345678';
export const BIN = path.resolve(import.meta.dirname, '../../bin/pgmaint.js');

export interface Harness {
  id: string;
  dbUrl: string;
  env: Record<string, string>;
  backupDir: string;
  dir: string;
  admin: pg.Pool;
  runtime(opts?: Omit<Partial<RuntimeOptions>, 'env'> & { env?: Record<string, string> }): Runtime;
  /** Writes a config file and points PGMAINT_CONFIG at it. */
  configFile(content: object): void;
  /** pgmaint's CLI with these arguments; or, with `script` (workers/backup.ts, …), that entry point instead. */
  spawnPgmaint(args: string[], extraEnv?: Record<string, string>, script?: string): Spawned;
  /** SIGKILLs every pgmaint process this harness started that is still running. */
  killChildren(): Promise<void>;
  /**
   * A PostgreSQL cluster of this file's own (WAL archiving on), for tests that break
   * archiving or take base backups; target "main" (DATABASE_URL, WAL_ARCHIVE_DIR) points
   * at its `dairy` database from then on. Stopped by close().
   */
  ownCluster(opts?: { dataChecksums?: boolean }): Promise<{ pg: PostgresInstance; pool: pg.Pool }>;
  close(): Promise<void>;
}

export interface Spawned {
  child: ChildProcess;
  /** SIGKILLs the process and everything it started (pg_dump, …): the whole process group. */
  killGroup(): Promise<void>;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  exited: Promise<number | null>;
}

export async function createHarness(name: string): Promise<Harness> {
  const id = `${name.replace(/[^a-z0-9]/g, '_')}_${randomBytes(3).toString('hex')}`;
  const base = new URL(inject('pgUrl'));
  const root = new pg.Client({ connectionString: base.toString() });
  await root.connect();
  await root.query(`create database "t_${id}"`);
  await root.end();
  base.pathname = `/t_${id}`;
  const dbUrl = base.toString();
  const dir = path.join(inject('tmpDir'), id);
  const backupDir = path.join(dir, 'backups');
  fs.mkdirSync(backupDir, { recursive: true });
  const env: Record<string, string> = {
    DATABASE_URL: dbUrl,
    REDIS_URL: inject('redisUrl'),
    BACKUP_DIR: backupDir,
    WAL_ARCHIVE_DIR: inject('walArchiveDir'),
    ADMIN_TOKEN,
    VIEWER_TOKEN,
    PORT: '0',
    LOG_LEVEL: 'warn',
    PG_BINDIR: '/usr/lib/postgresql/15/bin',
  };
  const prefixConfig = { redis: { prefix: `{t-${id}}` } };
  const admin = new pg.Pool({ connectionString: dbUrl, max: 4 });
  const runtimes: Runtime[] = [];
  const children: ChildProcess[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  const h: Harness = {
    id,
    dbUrl,
    env,
    backupDir,
    dir,
    admin,
    configFile(content) {
      const file = path.join(dir, 'pgmaint.json');
      const c = content as { redis?: object; governor?: object };
      // The governor's probe compares latency with its quiet baseline: on a machine shared by
      // other test runs that would hold jobs at random, so the tests switch it off unless they
      // give it (test/governor-*.test.ts do).
      const merged = {
        ...content,
        redis: { ...prefixConfig.redis, ...(c.redis ?? {}) },
        governor: { maxProbeRatio: null, ...(c.governor ?? {}) },
      };
      fs.writeFileSync(file, JSON.stringify(merged));
      env.PGMAINT_CONFIG = file;
    },
    runtime(opts = {}) {
      const config = loadConfig({ ...process.env, ...env, ...opts.env });
      const rt = createRuntime({ ...opts, config, logger: opts.logger ?? createLogger('silent') });
      runtimes.push(rt);
      return rt;
    },
    spawnPgmaint(args, extraEnv = {}, script) {
      const argv = script ? ['--import', 'tsx', path.resolve(BIN, '../..', script), ...args] : [BIN, ...args];
      // A process group of its own, so a test can kill the process with its children.
      const child = spawn(process.execPath, argv, {
        env: { ...process.env, ...env, LOG_LEVEL: 'info', ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      children.push(child);
      let out = '';
      const listeners = new Set<() => void>();
      const onData = (d: Buffer) => {
        out += d.toString();
        for (const l of listeners) l();
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      return {
        child,
        async killGroup() {
          if (child.exitCode !== null || child.signalCode !== null) return;
          const gone = new Promise((resolve) => child.once('exit', resolve));
          process.kill(-child.pid!, 'SIGKILL');
          await gone;
        },
        output: () => out,
        exited,
        waitFor(pattern, timeoutMs = 30_000) {
          return new Promise<void>((resolve, reject) => {
            const check = () => {
              if (pattern.test(out)) {
                listeners.delete(check);
                clearTimeout(timer);
                resolve();
              }
            };
            const timer = setTimeout(() => {
              listeners.delete(check);
              reject(new Error(`timed out waiting for ${pattern} in output:\n${out.slice(-3000)}`));
            }, timeoutMs);
            listeners.add(check);
            check();
            child.on('exit', (code) => {
              if (!pattern.test(out)) {
                clearTimeout(timer);
                reject(new Error(`process exited (${code}) before ${pattern}; output:\n${out.slice(-3000)}`));
              }
            });
          });
        },
      };
    },
    async killChildren() {
      const live = children.filter((c) => c.exitCode === null && c.signalCode === null);
      await Promise.all(
        live.map(
          (c) =>
            new Promise((resolve) => {
              c.once('exit', resolve);
              try {
                process.kill(-c.pid!, 'SIGKILL');
              } catch {
                c.kill('SIGKILL');
              }
            }),
        ),
      );
    },
    async ownCluster(opts = {}) {
      const cluster = await startPostgres({ dir: path.join(dir, 'pg'), ...opts });
      await createDatabase(cluster, 'dairy');
      const pool = new pg.Pool({ connectionString: cluster.url('dairy'), max: 4 });
      env.DATABASE_URL = cluster.url('dairy');
      env.WAL_ARCHIVE_DIR = cluster.walArchiveDir;
      cleanups.push(async () => {
        await pool.end();
        await cluster.stop('immediate');
      });
      return { pg: cluster, pool };
    },
    async close() {
      await h.killChildren();
      for (const rt of runtimes.reverse()) await rt.close().catch(() => undefined);
      await admin.end();
      for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
    },
  };
  h.configFile({});
  return h;
}

export async function waitUntil<T>(
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 30_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until a session matching `where` (SQL on pg_stat_activity) is blocked on a lock. */
export function waitUntilBlocked(pool: pg.Pool, where: string, what: string, timeoutMs = 30_000): Promise<unknown> {
  return waitUntil(
    async () =>
      (
        await pool.query(
          `select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and ` +
            `pid <> pg_backend_pid() and (${where})`,
        )
      ).rowCount,
    timeoutMs,
    what,
  );
}

/** Waits for a job to complete or fail, then reads it afresh (a job loaded before
 * its state changed would show stale attempts and reasons). */
export async function waitForFinished(
  queue: Queue,
  id: string,
  timeoutMs = 60_000,
): Promise<{ job: Job; state: 'completed' | 'failed' }> {
  const state = await waitUntil(
    async () => {
      const s = await queue.getJobState(id);
      return s === 'completed' || s === 'failed' ? s : undefined;
    },
    timeoutMs,
    `job ${queue.name}/${id} to finish`,
  );
  return { job: (await queue.getJob(id))!, state };
}
