// `pgmaint demo`: a local PostgreSQL (WAL archiving on) and Redis (AOF, noeviction,
// as in docker-compose.yml) under one directory, the dairy database (src/dairy.ts), tokens.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { newToken, writeEnvFile } from './env-file.ts';
import { seedDairy, type Scale } from './dairy.ts';
import { createDatabase, type PostgresInstance, startPostgres, startRedis } from './devstack.ts';
import pg from 'pg';
import { UsageError } from '../core/errors.ts';

/** The demo's configuration, the same file docker-compose.yml mounts. */
export const DEMO_CONFIG_FILE = path.resolve(import.meta.dirname, '../../docker/pgmaint.yaml');

export async function startDemoStack(
  dir: string,
  scale: Scale = 'default',
  opts: { offsite?: boolean } = {},
): Promise<{ env: Record<string, string>; stop(): Promise<void> }> {
  fs.mkdirSync(dir, { recursive: true });
  const tokensFile = path.join(dir, 'tokens.json');
  const tokens = fs.existsSync(tokensFile)
    ? JSON.parse(fs.readFileSync(tokensFile, 'utf8'))
    : { admin: newToken(), viewer: newToken() };
  // Kept across restarts: the off-site repository and bucket are encrypted with them.
  tokens.cipherPass ??= newToken();
  tokens.backupKey ??= randomBytes(32).toString('base64');
  fs.writeFileSync(tokensFile, JSON.stringify(tokens), { mode: 0o600 });

  const postgres = await startPostgres({ dir: path.join(dir, 'pg') });
  const redis = await startRedis({ dir: path.join(dir, 'redis'), appendonly: true });
  let offsite: { stop(): Promise<void> } | undefined;
  // PostgreSQL first: its archiver still pushes WAL to the off-site bucket while it stops.
  const stopAll = async () => {
    await redis.stop();
    await postgres.stop();
    await offsite?.stop();
  };
  const env: Record<string, string> = {};
  // Whatever fails from here on, the servers this started are stopped: no orphans.
  try {
    await createDatabase(postgres, 'dairy');
    await seedDairy(postgres.url('dairy'), scale, { log: (m) => console.error(`seed ${m}`) });
    Object.assign(env, {
      DATABASE_URL: postgres.url('dairy'),
      REDIS_URL: redis.url,
      BACKUP_DIR: path.join(dir, 'backups'),
      WAL_ARCHIVE_DIR: postgres.walArchiveDir,
      ADMIN_TOKEN: tokens.admin as string,
      VIEWER_TOKEN: tokens.viewer as string,
      PORT: process.env.PORT ?? '3000',
    });
    // The dairy ERP's policies, cache queries and drill tables: the file compose mounts too.
    Object.assign(env, { PGMAINT_CONFIG: DEMO_CONFIG_FILE });
    if (opts.offsite) {
      const extra = await startOffsite(dir, postgres, tokens);
      offsite = extra;
      Object.assign(env, extra.env);
      // A second file laid over the first (PGMAINT_CONFIG takes a comma-separated list).
      const offsiteFile = path.join(dir, 'pgmaint-offsite.json');
      fs.writeFileSync(offsiteFile, JSON.stringify(extra.config, null, 2));
      env.PGMAINT_CONFIG = `${DEMO_CONFIG_FILE},${offsiteFile}`;
    }
    writeEnvFile(path.join(dir, 'env.sh'), env);
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
  return {
    env,
    stop: stopAll,
  };
}

/**
 * The off-site setup on this machine: an S3 API (s3rver over TLS) stands in for the
 * object store; pgBackRest keeps the physical backups there, encrypted, and the
 * dumps and partition archives go to the same bucket, encrypted by pgmaint.
 */
async function startOffsite(
  dir: string,
  postgres: PostgresInstance,
  tokens: { cipherPass: string; backupKey: string },
): Promise<{ env: Record<string, string>; config: object; stop(): Promise<void> }> {
  const { startS3 } = await import('./s3.ts').catch(() => {
    throw new UsageError('--offsite needs the development dependencies (npm ci) for its local S3 server');
  });
  const { createStanza, s3RepoLines } = await import('./pgbackrest-stanza.ts');
  const s3 = await startS3(path.join(dir, 's3'));
  const pool = new pg.Pool({ connectionString: postgres.url('dairy'), max: 1 });
  try {
    const stanza = await createStanza(postgres, pool, dir, {
      repoLines: s3RepoLines(s3, tokens.cipherPass),
    });
    return {
      env: {
        PGMAINT_S3_KEY: s3.accessKeyId,
        PGMAINT_S3_SECRET: s3.secretAccessKey,
        PGMAINT_BACKUP_KEY: tokens.backupKey,
      },
      config: {
        targets: { main: { backup: { engine: 'pgbackrest', stanza: stanza.stanza, configFile: stanza.configFile } } },
        objectStore: {
          bucket: s3.bucket,
          endpoint: s3.endpoint,
          forcePathStyle: true,
          caFile: s3.caFile,
          accessKeyIdEnv: 'PGMAINT_S3_KEY',
          secretAccessKeyEnv: 'PGMAINT_S3_SECRET',
          keepLocal: false,
        },
        encryption: { keyId: 'demo', keyEnv: 'PGMAINT_BACKUP_KEY' },
      },
      stop: () => s3.stop(),
    };
  } catch (err) {
    await s3.stop();
    throw err;
  } finally {
    await pool.end();
  }
}
