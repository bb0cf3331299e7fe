// Configuration: environment plus an optional config file (JSON or YAML), parsed
// once by zod into a fully defaulted object the rest of the code trusts.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import YAML from 'yaml';
import { IANAZone } from 'luxon';
import { partitionPolicy, type PartitionPolicy } from './partition-policy.ts';
import { ConfigError } from './errors.ts';
import { qualifiedName } from './sql.ts';
import { BUSINESS_TIME_ZONE, MAIN_TARGET } from './constants.ts';

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

const postgresUrl = z
  .string(required)
  .min(1, 'is empty')
  .refine((v) => hasProtocol(v, ['postgres', 'postgresql']), 'must be a postgres:// or postgresql:// URL');

const redisUrl = z.string().refine((v) => hasProtocol(v, ['redis', 'rediss']), 'must be a redis:// or rediss:// URL');

const token = z.string().min(16, 'must be at least 16 characters');

const envSchema = z.object({
  DATABASE_URL: postgresUrl,
  REDIS_URL: redisUrl.default('redis://127.0.0.1:6379'),
  BACKUP_DIR: z.string(required).min(1, 'is empty'),
  WAL_ARCHIVE_DIR: z.string().min(1, 'is empty').optional(),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  /** Address the HTTP server binds: 0.0.0.0 (every IPv4 interface, what a container needs), 127.0.0.1, ::, … */
  HOST: z
    .string()
    .regex(/^[A-Za-z0-9.:-]{1,253}$/, 'must be an IP address or host name, e.g. 0.0.0.0 or 127.0.0.1')
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

const targetSchema = z
  .object({
    /** Connection URL; prefer urlEnv so the secret stays out of the file. */
    url: postgresUrl.optional(),
    /** Name of an environment variable that holds the connection URL. */
    urlEnv: z
      .string()
      .regex(/^[A-Z_][A-Z0-9_]*$/, 'must be an environment variable name')
      .optional(),
    /** Pool size for jobs on this target. */
    poolSize: z.number().int().min(1).max(50).default(4),
    /** Where this target's cluster archives its WAL (archive_command's destination, readable here). */
    walArchiveDir: z.string().min(1).optional(),
  })
  .strict()
  .refine((t) => Boolean(t.url) !== Boolean(t.urlEnv), 'give exactly one of url or urlEnv');

const jobPolicySchema = z
  .object({
    attempts: z.number().int().min(1).max(100).optional(),
    backoffMs: z.number().int().min(0).optional(),
    /** Maximum run time; the handler is aborted and its child processes killed after it. */
    timeoutMs: z.number().int().min(1000).optional(),
    concurrency: z.number().int().min(1).max(64).optional(),
    /** Job-specific policy, validated by the job itself. */
    policy: z.unknown().optional(),
  })
  .strict();

const keepSchema = z
  .object({
    /** The newest N are always kept, whatever their age. */
    keepLast: z.number().int().min(1).max(1000),
    /** Older than this (and beyond keepLast) they go. */
    maxAgeDays: z.number().min(0.001).max(36_500),
  })
  .strict();

const backupPolicySchema = z
  .object({
    /** Logical dumps: DOMAIN.md keeps 30 days. */
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

export const ALERT_RULES = [
  'job-failed',
  'deadman',
  'no-worker',
  'overrun',
  'backup-age',
  'archive-lag',
  'partition-runway',
  'default-rows',
  'retention-orphan',
  'health-read',
] as const;

const alertsSchema = z
  .object({
    /** How often the monitor judges the health snapshot. */
    intervalMs: z.number().int().min(1000).default(60_000),
    /** Dead-man switch: a schedule's success may be this late past its run plus maximum run time. */
    deadmanGraceMs: z
      .number()
      .int()
      .min(0)
      .default(30 * 60_000),
    /** A queue that needs a worker may go this long without one. */
    noWorkerForMs: z
      .number()
      .int()
      .min(0)
      .default(2 * 60_000),
    /** An active job may run this long past its maximum run time before it counts as stuck. */
    overrunGraceMs: z
      .number()
      .int()
      .min(0)
      .default(5 * 60_000),
    maxDumpAgeHours: z.number().positive().default(26),
    maxBaseBackupAgeHours: z.number().positive().default(26),
    /** DOMAIN.md: RPO under 15 minutes. */
    maxArchiveLagSeconds: z.number().int().positive().default(900),
    minPartitionRunwayDays: z.number().positive().default(3),
    /** Rules switched off by name (job-failed, deadman, no-worker, overrun, backup-age, archive-lag, partition-runway, default-rows, retention-orphan, health-read). */
    disabled: z.array(z.enum(ALERT_RULES)).default([]),
  })
  .strict();

const fileSchema = z
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
      .default({ prefix: '{pgmaint}' }),
    history: z
      .object({
        target: z.string().default(MAIN_TARGET),
        retentionDays: z.number().int().min(1).default(90),
        /** Commit each run's final row before BullMQ marks the job done (one commit per job). */
        synchronous: z.boolean().default(false),
      })
      .strict()
      .default({ target: MAIN_TARGET, retentionDays: 90, synchronous: false }),
    worker: z
      .object({
        stalledIntervalMs: z.number().int().min(500).default(30_000),
        lockDurationMs: z.number().int().min(1000).default(30_000),
        shutdownTimeoutMs: z.number().int().min(0).default(30_000),
        /** Completed/failed jobs kept in Redis per queue; the run history is the durable record. */
        keepCompleted: z.number().int().min(0).default(500),
        keepFailed: z.number().int().min(0).default(2000),
      })
      .strict()
      .default({
        stalledIntervalMs: 30_000,
        lockDurationMs: 30_000,
        shutdownTimeoutMs: 30_000,
        keepCompleted: 500,
        keepFailed: 2000,
      }),
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
        timezone: z.string().default(BUSINESS_TIME_ZONE),
      })
      .strict()
      .default({ watchdogIntervalMs: 60_000, lateToleranceMs: 5 * 60_000, disabled: [], timezone: BUSINESS_TIME_ZONE }),
    jobs: z.record(z.string(), jobPolicySchema).default({}),
    /** Partition policies for create-partitions and drop-expired-partitions. */
    partitions: z.array(partitionPolicy).default([]),
    backups: backupPolicySchema.default(backupPolicySchema.parse({})),
    /** warm-cache: dashboard queries precomputed into Redis. */
    cache: cacheSchema.default(cacheSchema.parse({})),
    alerts: alertsSchema.default(alertsSchema.parse({})),
  })
  .strict();

export interface TargetConfig {
  name: string;
  url: string;
  /** Where the URL came from, for messages: DATABASE_URL, the urlEnv variable, or the file key. */
  urlSource: string;
  poolSize: number;
  walArchiveDir?: string;
}

export interface RedisConfig {
  url: string;
  prefix: string;
  sentinels?: { host: string; port: number }[];
  sentinelName?: string;
  cluster?: { host: string; port: number }[];
}

export type JobPolicy = z.infer<typeof jobPolicySchema>;

export interface Config {
  targets: Map<string, TargetConfig>;
  redis: RedisConfig;
  backupDir: string;
  walArchiveDir?: string;
  port: number;
  host: string;
  adminToken?: string;
  viewerToken?: string;
  insecureNoAuth: boolean;
  logLevel: z.infer<typeof envSchema>['LOG_LEVEL'];
  history: { target: string; retentionDays: number; synchronous: boolean };
  worker: z.infer<typeof fileSchema>['worker'];
  scheduler: z.infer<typeof fileSchema>['scheduler'];
  jobs: Record<string, JobPolicy>;
  partitions: PartitionPolicy[];
  backups: z.infer<typeof backupPolicySchema>;
  cache: z.infer<typeof cacheSchema> & { redisUrl: string };
  alerts: z.infer<typeof alertsSchema> & { webhookUrl?: string };
  metricsToken?: string;
  enqueueRateLimit: number;
  configFile?: string;
}

/** "a.b.0.c: message" for the first few issues, naming where the problem is. */
export function formatIssues(issues: readonly z.core.$ZodIssue[], prefix = ''): string {
  return issues
    .slice(0, 5)
    .map((i) => `${[prefix, ...i.path.map(String)].filter(Boolean).join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`PGMAINT_CONFIG: cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return /\.json$/i.test(file) ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new ConfigError(
      `PGMAINT_CONFIG: ${file} is not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
    );
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // An empty variable (ADMIN_TOKEN= in a compose file) counts as unset.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsedEnv = envSchema.safeParse(present);
  if (!parsedEnv.success) throw new ConfigError(`environment: ${formatIssues(parsedEnv.error.issues)}`);
  const e = parsedEnv.data;

  const fileData = e.PGMAINT_CONFIG ? readConfigFile(e.PGMAINT_CONFIG) : {};
  const parsedFile = fileSchema.safeParse(fileData ?? {});
  if (!parsedFile.success) {
    throw new ConfigError(`config file ${e.PGMAINT_CONFIG}: ${formatIssues(parsedFile.error.issues)}`);
  }
  const f = parsedFile.data;

  const targets = new Map<string, TargetConfig>();
  const walArchive = (dir: string | undefined) => (dir ? path.resolve(dir) : undefined);
  targets.set(MAIN_TARGET, {
    name: MAIN_TARGET,
    url: e.DATABASE_URL,
    urlSource: 'DATABASE_URL',
    poolSize: 4,
    walArchiveDir: walArchive(e.WAL_ARCHIVE_DIR),
  });
  for (const [name, t] of Object.entries(f.targets)) {
    let url = t.url;
    if (t.urlEnv) {
      url = env[t.urlEnv];
      const check = postgresUrl.safeParse(url);
      if (!check.success)
        throw new ConfigError(
          `${t.urlEnv} (targets.${name}.urlEnv): ${url ? check.error.issues[0]?.message : 'is not set'}`,
        );
    }
    if (name === MAIN_TARGET && url !== e.DATABASE_URL) {
      throw new ConfigError('targets.main: target "main" is DATABASE_URL; do not redefine it in the config file');
    }
    targets.set(name, {
      name,
      url: url!,
      urlSource: t.urlEnv ?? `targets.${name}.url`,
      poolSize: t.poolSize,
      walArchiveDir: walArchive(t.walArchiveDir),
    });
  }
  f.partitions.forEach((p, i) => {
    if (!targets.has(p.target)) throw new ConfigError(`partitions.${i}.target: unknown target "${p.target}"`);
  });
  const seenPolicies = new Set(f.partitions.map((p) => `${p.target}/${p.table}`));
  if (seenPolicies.size !== f.partitions.length)
    throw new ConfigError('partitions: a table has two policies on the same target');
  if (!targets.has(f.history.target)) throw new ConfigError(`history.target: unknown target "${f.history.target}"`);
  if (!IANAZone.isValidZone(f.scheduler.timezone))
    throw new ConfigError(`scheduler.timezone: "${f.scheduler.timezone}" is not an IANA time zone`);
  if (f.redis.sentinels && !f.redis.sentinelName)
    throw new ConfigError('redis.sentinelName: required with redis.sentinels');
  let cacheRedisUrl = e.REDIS_URL;
  if (f.cache.redisUrlEnv) {
    const check = redisUrl.safeParse(env[f.cache.redisUrlEnv]);
    if (!check.success)
      throw new ConfigError(
        `${f.cache.redisUrlEnv} (cache.redisUrlEnv): ${env[f.cache.redisUrlEnv] ? check.error.issues[0]?.message : 'is not set'}`,
      );
    cacheRedisUrl = check.data;
  }
  const keys = new Set<string>();
  f.cache.queries.forEach((q, i) => {
    if (!targets.has(q.target)) throw new ConfigError(`cache.queries.${i}.target: unknown target "${q.target}"`);
    if (keys.has(q.key)) throw new ConfigError(`cache.queries.${i}.key: "${q.key}" is declared twice`);
    keys.add(q.key);
  });

  return {
    targets,
    redis: { url: e.REDIS_URL, ...f.redis },
    backupDir: path.resolve(e.BACKUP_DIR),
    walArchiveDir: e.WAL_ARCHIVE_DIR ? path.resolve(e.WAL_ARCHIVE_DIR) : undefined,
    port: e.PORT,
    host: e.HOST,
    adminToken: e.ADMIN_TOKEN,
    viewerToken: e.VIEWER_TOKEN,
    insecureNoAuth: e.PGMAINT_INSECURE_NO_AUTH === '1' || e.PGMAINT_INSECURE_NO_AUTH === 'true',
    logLevel: e.LOG_LEVEL,
    history: f.history,
    worker: f.worker,
    scheduler: f.scheduler,
    jobs: f.jobs,
    partitions: f.partitions,
    backups: f.backups,
    cache: { ...f.cache, redisUrl: cacheRedisUrl },
    alerts: { ...f.alerts, webhookUrl: e.ALERT_WEBHOOK_URL },
    metricsToken: e.METRICS_TOKEN,
    enqueueRateLimit: e.ENQUEUE_RATE_LIMIT,
    configFile: e.PGMAINT_CONFIG,
  };
}
