// The configuration's schemas: the environment's variables and the config file's
// keys, with every default. The Config type is derived from them (config.ts).
import { isIP } from 'node:net';
import { z } from 'zod';
import { MAIN_TARGET } from './constants.ts';
import { governorKeys } from './governor-policy.ts';
import { partitionPolicy } from './partition-policy.ts';
import { qualifiedName } from './sql.ts';
import { clusterName, connectionsSchema } from './connections-schema.ts';
import { durationField } from './spread.ts';
import { alertsSchema } from './alerts-schema.ts';

/** Pool size of a target that does not set one (the main target always). */
export const DEFAULT_POOL_SIZE = 4;

export const TARGET_NAME = /^[a-z][a-z0-9_-]{0,62}$/;

const required = {
  error: (iss: { input: unknown }) => (iss.input === undefined ? 'is required (not set)' : 'must be a string'),
};

/** True when `v` parses as a URL with one of these schemes. */
function hasProtocol(v: string, schemes: string[]): boolean {
  try {
    return schemes.includes(new URL(v).protocol.slice(0, -1));
  } catch {
    return false;
  }
}

export const postgresUrl = z
  .string(required)
  .min(1, 'is empty')
  .refine((v) => hasProtocol(v, ['postgres', 'postgresql']), 'must be a postgres:// or postgresql:// URL');

export const redisUrl = z
  .string()
  .refine((v) => hasProtocol(v, ['redis', 'rediss']), 'must be a redis:// or rediss:// URL');

const token = z.string().min(16, 'must be at least 16 characters');

export const envSchema = z.object({
  DATABASE_URL: postgresUrl,
  REDIS_URL: redisUrl.default('redis://127.0.0.1:6379'),
  /** Required by the server, the monitor and workers that serve a job needing backupDir (src/runner/needs.ts). */
  BACKUP_DIR: z.string().min(1, 'is empty').optional(),
  WAL_ARCHIVE_DIR: z.string().min(1, 'is empty').optional(),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  /**
   * Address the HTTP server binds: 0.0.0.0 (every IPv4 interface, what a container needs), 127.0.0.1, ::, …
   * An IP address, never a name: a name would be resolved at listen time, to whichever address it gives then.
   */
  HOST: z
    .string()
    .refine((v) => isIP(v) !== 0, {
      error: (iss) =>
        `must be an IP address to listen on, e.g. 0.0.0.0 (every IPv4 interface) or 127.0.0.1 (got ` +
        `${JSON.stringify(iss.input)})`,
    })
    .default('0.0.0.0'),
  ADMIN_TOKEN: token.optional(),
  VIEWER_TOKEN: token.optional(),
  PGMAINT_CONFIG: z.string().optional(),
  /** Opt-out of auth for a local demo only; logged loudly at start. */
  PGMAINT_INSECURE_NO_AUTH: z.enum(['0', '1', 'true', 'false']).optional(),
  /** Bearer token that may read /metrics only (for Prometheus); admin and viewer tokens may too. */
  METRICS_TOKEN: token.optional(),
  /** Where alerts are POSTed (Slack incoming webhook or any JSON receiver). */
  ALERT_WEBHOOK_URL: z
    .string()
    .refine((v) => hasProtocol(v, ['http', 'https']), 'must be an http:// or https:// URL')
    .optional(),
  /** Ad-hoc enqueues through the API per client per minute. */
  ENQUEUE_RATE_LIMIT: z.coerce.number().int().min(1).default(300),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

const hostPort = z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict();

/**
 * What each backup engine asks of the machine of a worker that serves the backup jobs
 * (src/runner/needs.ts checks it at start): programs on PATH, and whether it reads the
 * target's walArchiveDir. Its keys are the engines' names; src/backup/engines/ implements them.
 */
export const BACKUP_ENGINES = {
  native: { onPath: [], readsWalArchiveDir: true },
  pgbackrest: { onPath: ['pgbackrest'], install: 'install pgBackRest', readsWalArchiveDir: false },
} as const satisfies Record<string, { onPath: readonly string[]; install?: string; readsWalArchiveDir: boolean }>;

export type BackupEngineName = keyof typeof BACKUP_ENGINES;

const ENGINE_NAMES = Object.keys(BACKUP_ENGINES) as [BackupEngineName, ...BackupEngineName[]];

/**
 * native: pg_basebackup into BACKUP_DIR and the WAL directory walArchiveDir.
 * pgbackrest: pgBackRest owns the repository (posix, S3, GCS, Azure; its own
 * encryption); pgmaint runs its backup, verify, check, restore and expire.
 */
export const backupEngineSchema = z
  .object({
    engine: z.enum(ENGINE_NAMES).default('native'),
    /** The pgBackRest stanza of this cluster. */
    stanza: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'must be a stanza name (letters, digits, _ . -)')
      .optional(),
    /** pgbackrest.conf to use (default: pgBackRest's own, /etc/pgbackrest/pgbackrest.conf). */
    configFile: z
      .string()
      .regex(/^[^'"\\\s]+$/, 'must be a path without quotes, backslashes or white space (it goes into restore_command)')
      .optional(),
  })
  .strict()
  .refine((b) => b.engine !== 'pgbackrest' || b.stanza, {
    path: ['stanza'],
    message: 'is required with engine "pgbackrest"',
  });

export const targetSchema = z
  .object({
    /** Connection URL; prefer urlEnv so the secret stays out of the file. */
    url: postgresUrl.optional(),
    /** Name of an environment variable that holds the connection URL. */
    urlEnv: z
      .string()
      .regex(/^[A-Z_][A-Z0-9_]*$/, 'must be an environment variable name')
      .optional(),
    /** Pool size for jobs on this target. */
    poolSize: z.number().int().min(1).max(50).default(DEFAULT_POOL_SIZE),
    /** The cluster it shares a connection budget with (default: host:port of its URL). */
    cluster: clusterName.optional(),
    /** Where this target's cluster archives its WAL (archive_command's destination, readable here). */
    walArchiveDir: z.string().min(1).optional(),
    /** How physical backups of this target are taken, kept and restored. */
    backup: backupEngineSchema.prefault({}),
    /**
     * Which of the default schedules this target gets: "default" (all that apply),
     * "none", or a list of their ids (e.g. [backup-reporting-nightly]).
     */
    schedules: z
      .union([z.enum(['default', 'none']), z.array(z.string().min(1)).min(1, 'list at least one id, or say "none"')])
      .default('default'),
    /** Tables (schema.table) the monthly repack-table schedule repacks with pg_repack. */
    repackTables: z.array(qualifiedName).max(100).default([]),
    /** The load governor's keys for this target, over the file's `governor:` (docs/governor.md). */
    governor: governorKeys.optional(),
  })
  .strict();

export const SCHEDULE_ID = /^[a-z0-9][a-z0-9_.-]{0,99}$/;

/**
 * A schedule in the config file. An id of a default schedule changes only the fields
 * given; a new id adds a schedule (job and cron required, checked when merged).
 */
export const scheduleEntrySchema = z
  .object({
    id: z.string().regex(SCHEDULE_ID, 'must be lower-case letters, digits, _ . - (at most 100)'),
    job: z.string().min(1).optional(),
    /** Five fields: minute hour day-of-month month day-of-week. */
    cron: z.string().min(1).optional(),
    /** IANA zone the cron is read in (default: businessTimeZone). */
    tz: z.string().min(1).optional(),
    /** The job's payload; merged over a default schedule's payload key by key. */
    payload: z.record(z.string(), z.unknown()).optional(),
    /** Shorthand for payload.target. */
    target: z.string().min(1).optional(),
    catchUp: z.enum(['none', 'latest']).optional(),
    overlap: z.enum(['skip', 'allow']).optional(),
    /** Runs each target at its cron time plus a stable offset in [0, spread) (e.g. 45m; 0s: none). */
    spread: durationField.optional(),
  })
  .strict();

export const jobPolicySchema = z
  .object({
    attempts: z.number().int().min(1).max(100).optional(),
    backoffMs: z.number().int().min(0).optional(),
    /** Maximum run time; the handler is aborted and its child processes killed after it. */
    timeoutMs: z.number().int().min(1000).optional(),
    /** Runs of this job at once in one worker process. */
    concurrency: z.number().int().min(1).max(64).optional(),
    /** Runs of this job at once across the deployment, all worker processes together (unset: no limit). */
    globalConcurrency: z.number().int().min(1).max(10_000).optional(),
    /** Heavy jobs take one of worker.heavyJobsPerCluster permits of their target's cluster; overrides the job's own. */
    heavy: z.boolean().optional(),
    /** Spread of every schedule of this job (a schedule's own `spread` wins), e.g. 45m. */
    spread: durationField.optional(),
  })
  .strict();

const keepSchema = z
  .object({
    /** The newest N are always kept, whatever their age. */
    keepLast: z.number().int().min(1).max(1000),
    /** Older than this (and beyond keepLast) they go. */
    maxAgeDays: z.number().min(0.0001).max(36_500),
  })
  .strict();

const backupPolicySchema = z
  .object({
    /** Logical dumps: docs/dairy-erp.md keeps 30 days. */
    dumps: keepSchema.default({ keepLast: 3, maxAgeDays: 30 }),
    /** Base backups; maxAgeDays is also the recovery window kept (point-in-time restore that far back). */
    base: keepSchema.default({ keepLast: 2, maxAgeDays: 7 }),
    /** Where the PITR drill and restore checks make their scratch instances (default: the OS temp dir). */
    scratchDir: z.string().min(1).optional(),
    /** Tables whose row counts the PITR drill compares at the target time (schema.table). */
    drillTables: z.array(qualifiedName).default([]),
  })
  .strict();

const warmQuerySchema = z
  .object({
    /** Redis key (after cache.keyPrefix); with perRow, a template such as "product:{product_tmpl_id}". */
    key: z.string().regex(/^[A-Za-z0-9:_{}.-]{1,200}$/, 'must be letters, digits and : _ . - { } only'),
    /** A read-only query; $1… take `params`. */
    sql: z.string().min(1),
    params: z.array(z.union([z.string(), z.number(), z.boolean(), z.null()])).default([]),
    ttlSeconds: z
      .number()
      .int()
      .min(1)
      .max(30 * 86_400),
    target: z.string().default(MAIN_TARGET),
    /** One key a row (the key template names the row's columns) instead of one key for all rows. */
    perRow: z.boolean().default(false),
  })
  .strict();

const cacheSchema = z
  .object({
    /** Environment variable with the cache Redis URL (another instance or database number); default REDIS_URL. */
    redisUrlEnv: z
      .string()
      .regex(/^[A-Z_][A-Z0-9_]*$/, 'must be an environment variable name')
      .optional(),
    keyPrefix: z.string().max(100).default('pgmaint:cache:'),
    queries: z.array(warmQuerySchema).default([]),
  })
  .strict();

const envName = z.string().regex(/^[A-Z_][A-Z0-9_]*$/, 'must be an environment variable name');

/** An S3-compatible bucket for logical dumps and partition archives. */
export const objectStoreSchema = z
  .object({
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name'),
    /** Key prefix, e.g. "pgmaint/" (objects go under <prefix>dumps/<target>/…). */
    prefix: z
      .string()
      .regex(/^([A-Za-z0-9._-]+\/)*$/, 'must be path segments ending in "/", e.g. "pgmaint/"')
      .default('pgmaint/'),
    /** For S3-compatible services (MinIO, …); AWS when absent. */
    endpoint: z
      .string()
      .regex(/^https?:\/\/[^\s'"]+$/, 'must be an http:// or https:// URL')
      .optional(),
    region: z.string().min(1).default('us-east-1'),
    /** Path-style URLs (MinIO and most self-hosted services need them). */
    forcePathStyle: z.boolean().default(false),
    /** CA certificate (PEM) that signs the endpoint's certificate. */
    caFile: z.string().min(1).optional(),
    /** Environment variables that hold the credentials (never the file itself). */
    accessKeyIdEnv: envName.default('AWS_ACCESS_KEY_ID'),
    secretAccessKeyEnv: envName.default('AWS_SECRET_ACCESS_KEY'),
    /** Keep the local copy after a verified upload (default), or remove it. */
    keepLocal: z.boolean().default(true),
    /** Deadline of each attempt's TCP connection to the endpoint. */
    connectTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
    /** Deadline of each attempt's answer (its first byte), and the longest silence while a transfer streams. */
    requestTimeoutMs: z.number().int().min(100).max(3_600_000).default(120_000),
    /** Attempts per request (1 = no retry); retries back off exponentially, with jitter. */
    maxAttempts: z.number().int().min(1).max(10).default(3),
  })
  .strict();

const keyRef = z
  .object({ keyId: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be a short key id'), keyEnv: envName })
  .strict();

/** AES-256-GCM for dumps and partition archives in the bucket; the key is a 32-byte value in keyEnv. */
export const encryptionSchema = keyRef
  .extend({
    keyEnv: envName.default('PGMAINT_BACKUP_KEY'),
    /** Keys of objects written before a key rotation, still needed to read them. */
    previousKeys: z.array(keyRef).default([]),
  })
  .strict();

export const fileSchema = z
  .object({
    targets: z
      .record(z.string().regex(TARGET_NAME, 'target names are lower-case letters, digits, _ and -'), targetSchema)
      .default({}),
    redis: z
      .object({
        /** Key prefix; hash-tagged by default so every queue key lands in one Cluster slot. */
        prefix: z.string().min(1).default('{pgmaint}'),
        sentinels: z.array(hostPort).optional(),
        sentinelName: z.string().optional(),
        cluster: z.array(hostPort).optional(),
      })
      .strict()
      .prefault({}),
    history: z
      .object({
        target: z.string().default(MAIN_TARGET),
        retentionDays: z.number().int().min(1).default(90),
        /** Commit each run's final row before BullMQ marks the job done (one commit per job). */
        synchronous: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    worker: z
      .object({
        stalledIntervalMs: z.number().int().min(500).default(30_000),
        lockDurationMs: z.number().int().min(1000).default(30_000),
        shutdownTimeoutMs: z.number().int().min(0).default(30_000),
        /** Completed/failed jobs kept in Redis per queue; the run history is the durable record. */
        keepCompleted: z.number().int().min(0).default(500),
        keepFailed: z.number().int().min(0).default(2000),
        /** Heavy jobs (vacuum, backups, index and integrity work) at once on one cluster (a target's `cluster`). */
        heavyJobsPerCluster: z.number().int().min(1).max(100).default(1),
        /** How long a heavy job waits (delayed, no attempt used) before it asks again for its cluster's permit. */
        heavyWaitMs: z.number().int().min(100).max(600_000).default(5000),
      })
      .strict()
      .prefault({}),
    scheduler: z
      .object({
        watchdogIntervalMs: z.number().int().min(1000).default(60_000),
        /** A scheduled run this late counts as missed (catchUp decides whether it still runs). */
        lateToleranceMs: z
          .number()
          .int()
          .min(0)
          .default(5 * 60_000),
        disabled: z.array(z.string()).default([]),
        /** Deprecated: the old name of businessTimeZone. */
        timezone: z.string().optional(),
      })
      .strict()
      .prefault({}),
    /** The zone of the business day: the rollup's days (and the demo's partition bounds). */
    businessTimeZone: z.string().optional(),
    jobs: z.record(z.string(), jobPolicySchema).default({}),
    /** Schedules added, or default schedules changed (see scheduleEntrySchema). */
    schedules: z.array(scheduleEntrySchema).default([]),
    /** Partition policies for create-partitions and drop-expired-partitions. */
    partitions: z.array(partitionPolicy).default([]),
    backups: backupPolicySchema.prefault({}),
    /** warm-cache: dashboard queries precomputed into Redis. */
    cache: cacheSchema.prefault({}),
    alerts: alertsSchema.prefault({}),
    /** The load governor's keys for every target (docs/governor.md); targets.<name>.governor over them. */
    governor: governorKeys.optional(),
    connections: connectionsSchema.prefault({}),
    objectStore: objectStoreSchema.optional(),
    encryption: encryptionSchema.optional(),
  })
  .strict();
