// `pgmaint demo`: a local PostgreSQL (WAL archiving on) and Redis (AOF, noeviction,
// as in docker-compose.yml) under one directory, the dairy database (src/dairy.ts), tokens.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { newToken, writeEnvFile } from './env-file.ts';
import { seedDairy, type Scale } from './dairy.ts';
import { createDatabase, type PostgresInstance, startPostgres, startRedis } from './devstack.ts';
import { DEMO_CONFIG_FILE, offsiteConfigFile } from './demo-dir.ts';
import pg from 'pg';
import { UsageError } from '../core/errors.ts';

export { claimDemoDir, DEMO_CONFIG_FILE, demoConfigFiles } from './demo-dir.ts';

export interface DemoStack {
  env: Record<string, string>;
  /** Stops PostgreSQL and Redis (and the S3 server), and says so; rejects, naming the command, if PostgreSQL stays. */
  stop(): Promise<void>;
  /** On SIGINT or SIGTERM, says at once that the demo stops and how long running jobs get. */
  announceStopOnSignals(shutdownTimeoutMs: number): void;
  /** What the terminal shows once the server listens at `url`: URL, tokens, mode, env.sh; Ctrl-C last. */
  banner(url: string): string;
}

export async function startDemoStack(
  dir: string,
  scale: Scale = 'default',
  opts: { offsite?: boolean; configFiles?: string[]; log?: (message: string) => void } = {},
): Promise<DemoStack> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  fs.mkdirSync(dir, { recursive: true });
  const tokensFile = path.join(dir, 'tokens.json');
  const tokens = fs.existsSync(tokensFile)
    ? JSON.parse(fs.readFileSync(tokensFile, 'utf8'))
    : { admin: newToken(), viewer: newToken() };
  // Kept across restarts: the off-site repository and bucket are encrypted with them.
  tokens.cipherPass ??= newToken();
  tokens.backupKey ??= randomBytes(32).toString('base64');
  fs.writeFileSync(tokensFile, JSON.stringify(tokens), { mode: 0o600 });

  // Every start archives as its mode says: what an earlier --offsite run set with ALTER SYSTEM
  // (archive-push to a bucket that is gone now) is dropped before the server starts, so the
  // local archive_command of postgresql.conf holds until --offsite sets its own again.
  const postgres = await startPostgres({
    dir: path.join(dir, 'pg'),
    resetAlterSystem: ['archive_mode', 'archive_command'],
    log,
  });
  let redis: Awaited<ReturnType<typeof startRedis>> | undefined;
  let offsite: { stop(): Promise<void> } | undefined;
  // If this process exits without stop() (a second Ctrl-C, a crash), nothing stays running.
  const emergencyStop = () => {
    redis?.process.kill('SIGTERM');
    postgres.stopSync();
    log('pgmaint demo: exiting before a clean stop; Redis and PostgreSQL stopped at once (immediate shutdown)');
  };
  process.on('exit', emergencyStop);
  // PostgreSQL before S3: its archiver still pushes WAL to the off-site bucket while it stops.
  const stopAll = async () => {
    try {
      await redis?.stop();
      await postgres.stop('fast');
      process.off('exit', emergencyStop);
      log(`pgmaint demo: stopped; its PostgreSQL and Redis are down (data kept in ${dir})`);
    } finally {
      await offsite?.stop();
    }
  };
  const env: Record<string, string> = {};
  let offsiteSummary: string | undefined;
  // Whatever fails from here on, the servers this started are stopped: no orphans.
  try {
    redis = await startRedis({ dir: path.join(dir, 'redis'), appendonly: true, log });
    await createDatabase(postgres, 'dairy');
    await seedDairy(postgres.url('dairy'), scale, { log: (m) => log(`seed ${m}`), reseedIncomplete: true });
    Object.assign(env, {
      DATABASE_URL: postgres.url('dairy'),
      REDIS_URL: redis.url,
      BACKUP_DIR: path.join(dir, 'backups'),
      WAL_ARCHIVE_DIR: postgres.walArchiveDir,
      ADMIN_TOKEN: tokens.admin as string,
      VIEWER_TOKEN: tokens.viewer as string,
      PORT: process.env.PORT ?? '3000',
    });
    // The dairy ERP's policies, cache queries and drill tables (the file compose mounts too),
    // then with --offsite the bucket's file, then the caller's PGMAINT_CONFIG files, in that order.
    const files = [DEMO_CONFIG_FILE];
    if (opts.offsite) {
      const extra = await startOffsite(dir, postgres, tokens);
      offsite = extra;
      Object.assign(env, extra.env);
      fs.writeFileSync(offsiteConfigFile(dir), JSON.stringify(extra.config, null, 2));
      files.push(offsiteConfigFile(dir));
      offsiteSummary = extra.summary;
    }
    env.PGMAINT_CONFIG = [...files, ...(opts.configFiles ?? [])].join(',');
    writeEnvFile(path.join(dir, 'env.sh'), env);
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
  let stopping = false;
  return {
    env,
    stop: stopAll,
    announceStopOnSignals(shutdownTimeoutMs) {
      const say = () => {
        if (!stopping)
          log(
            `\npgmaint demo: stopping (running jobs get up to ${shutdownTimeoutMs / 1000} s), then Redis and ` +
              'PostgreSQL',
          );
        stopping = true;
      };
      process.on('SIGINT', say).on('SIGTERM', say);
    },
    banner: (url) =>
      `\npgmaint demo is up.\n  Bull Board: ${url}/admin/queues  (sign in with the admin token)\n  admin token:  ` +
      `${env.ADMIN_TOKEN}\n  viewer token: ${env.VIEWER_TOKEN}\n` +
      `  try: curl -X POST -H "Authorization: Bearer ${env.ADMIN_TOKEN}" -H 'content-type: application/json' ` +
      `-d '{}' ${url}/api/jobs/backup\n` +
      (offsiteSummary ? `  off-site mode: ${offsiteSummary}\n` : '') +
      (opts.configFiles?.length ? `  config: the demo's, then PGMAINT_CONFIG's ${opts.configFiles.join(', ')}\n` : '') +
      `  env for other commands: source ${path.join(dir, 'env.sh')}  (then: pgmaint status)\n` +
      `  logs: warnings only here (LOG_LEVEL=${process.env.LOG_LEVEL}); every run's log is in Bull Board, ` +
      `LOG_LEVEL=info shows them here too\n  Ctrl-C stops everything.\n\n`,
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
): Promise<{ env: Record<string, string>; config: object; summary: string; stop(): Promise<void> }> {
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
      summary:
        `WAL and base backups through pgBackRest (stanza ${stanza.stanza}), dumps and partition archives, ` +
        `encrypted, to bucket ${s3.bucket} at ${s3.endpoint} (a local S3 server)`,
      stop: () => s3.stop(),
    };
  } catch (err) {
    await s3.stop();
    throw err;
  } finally {
    await pool.end();
  }
}
