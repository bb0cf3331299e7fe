// One throwaway PostgreSQL cluster (WAL archiving on) and one redis-server for the
// whole run, on free ports; each test file takes its own database and key prefix.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startPostgres, startRedis, type PostgresInstance, type RedisInstance } from '../../src/dev/devstack.ts';

let pg: PostgresInstance | undefined;
let redis: RedisInstance | undefined;
let dir: string | undefined;

export async function setup(project: TestProject) {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-test-'));
  fs.chmodSync(dir, 0o755); // the postgres user must reach the cluster below it
  [pg, redis] = await Promise.all([
    startPostgres({ dir: path.join(dir, 'pg') }),
    startRedis({ dir: path.join(dir, 'redis') }),
  ]);
  project.provide('pgUrl', pg.url());
  project.provide('pgPort', pg.port);
  project.provide('pgDataDir', pg.dataDir);
  project.provide('walArchiveDir', pg.walArchiveDir);
  project.provide('redisUrl', redis.url);
  project.provide('tmpDir', dir);
}

export async function teardown() {
  await redis?.stop();
  await pg?.stop('immediate');
  if (dir && !process.env.PGMAINT_KEEP_TEST_DIR) fs.rmSync(dir, { recursive: true, force: true });
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrl: string;
    pgPort: number;
    pgDataDir: string;
    walArchiveDir: string;
    redisUrl: string;
    tmpDir: string;
  }
}
