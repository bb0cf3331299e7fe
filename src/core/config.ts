// Configuration: environment plus an optional config file (JSON or YAML), parsed
// once by zod (config-schema.ts holds every key and default) into a fully
// defaulted object the rest of the code trusts. Its type is derived from the schemas.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { IANAZone } from 'luxon';
import type { z } from 'zod';
import { mergeConfig } from './merge-config.ts';
import {
  type backupEngineSchema,
  DEFAULT_POOL_SIZE,
  envSchema,
  fileSchema,
  postgresUrl,
  redisUrl,
  type targetSchema,
} from './config-schema.ts';
import { BUSINESS_TIME_ZONE, MAIN_TARGET } from './constants.ts';
import { ConfigError } from './errors.ts';
import {
  GOVERNOR_DEFAULTS,
  type GovernorKeys,
  type GovernorPolicy,
  governorIssues,
  mergeGovernor,
} from './governor-policy.ts';
import { parseKey } from './key.ts';

export { ALERT_RULES } from './alerts-schema.ts';
export { TARGET_NAME } from './config-schema.ts';

type Env = z.output<typeof envSchema>;
type File = z.output<typeof fileSchema>;

/** A target database, resolved: its URL read from wherever the file said. */
export interface ConfigSecrets {
  s3?: { accessKeyId: string; secretAccessKey: string };
  /** Encryption keys by key id, as their variables hold them. */
  keys: Record<string, string>;
}

const SECRETS = new WeakMap<Config, ConfigSecrets>();

export function configSecrets(config: Config): ConfigSecrets {
  return SECRETS.get(config) ?? { keys: {} };
}

export type BackupEngine = z.output<typeof backupEngineSchema>;

export type TargetConfig = Pick<
  z.output<typeof targetSchema>,
  'poolSize' | 'walArchiveDir' | 'schedules' | 'repackTables'
> & {
  /** native, or pgbackrest with its stanza (and config file, resolved to an absolute path). */
  backup: BackupEngine;
  name: string;
  url: string;
  /** The cluster whose connection budget it shares: its `cluster`, or host:port of its URL. */
  cluster: string;
  /** Where the URL came from, for messages: DATABASE_URL, the urlEnv variable, or the file key. */
  urlSource: string;
  /** The load governor's policy: defaults, the file's `governor:`, then the target's own keys. */
  governor: GovernorPolicy;
};

export type RedisConfig = File['redis'] & { url: string };

export type Config = Omit<File, 'targets' | 'redis' | 'cache' | 'alerts' | 'businessTimeZone' | 'governor'> & {
  targets: Map<string, TargetConfig>;
  redis: RedisConfig;
  cache: File['cache'] & { redisUrl: string };
  alerts: File['alerts'] & { webhookUrl?: string };
  /** The zone of the business day (businessTimeZone, formerly scheduler.timezone). */
  businessTimeZone: string;
  /** BACKUP_DIR, absolute; unset on a machine without the backups (read it through backupDirOf). */
  backupDir?: string;
  port: number;
  host: string;
  adminToken?: string;
  viewerToken?: string;
  insecureNoAuth: boolean;
  logLevel: Env['LOG_LEVEL'];
  metricsToken?: string;
  enqueueRateLimit: number;
};

/**
 * Six hex digits naming this deployment (its Redis key prefix): job ids repeat across
 * deployments, so names they give to shared things (scratch databases) carry this too.
 */
export function deploymentTag(config: Pick<Config, 'redis'>): string {
  return createHash('sha256').update(config.redis.prefix).digest('hex').slice(0, 6);
}

/** "a.b.0.c: message" for the first few issues, naming where the problem is. */
export function formatIssues(issues: readonly z.core.$ZodIssue[], prefix = ''): string {
  return issues
    .slice(0, 5)
    .map((i) => `${[prefix, ...i.path.map(String)].filter(Boolean).join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

/**
 * BACKUP_DIR, for code that writes or lists backups. A process without it (a worker that
 * serves only SQL jobs) never gets here: workers check their jobs' needs at start, and the
 * server and the monitor require it. Anything else is refused by name.
 */
export function backupDirOf(config: Pick<Config, 'backupDir'>): string {
  if (!config.backupDir)
    throw new ConfigError('BACKUP_DIR: is required (not set): backups are written and listed there');
  return config.backupDir;
}

/** The YAML parser, loaded only for a YAML file: a command with JSON or no file does not pay for loading it. */
const yaml = () => createRequire(import.meta.url)('yaml') as typeof import('yaml');

function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`PGMAINT_CONFIG: cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return /\.json$/i.test(file) ? JSON.parse(text) : yaml().parse(text);
  } catch (err) {
    throw new ConfigError(
      `PGMAINT_CONFIG: ${file} is not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
    );
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // Phases in this order, each refusing with a ConfigError that names the key: the
  // first problem found is the one reported.
  const e = parseEnv(env);
  const f = parseConfigFiles(e.PGMAINT_CONFIG);
  const targets = resolveTargets(e, f, env);
  checkTargetReferences(f, targets);
  checkConnections(f.connections, targets);
  const businessTimeZone = resolveBusinessTimeZone(f);
  if (f.redis.sentinels && !f.redis.sentinelName)
    throw new ConfigError('redis.sentinelName: required with redis.sentinels');
  const cacheRedisUrl = resolveCache(e, f, env, targets);
  checkSecretVariables(f, env);
  const config: Config = {
    targets,
    redis: { url: e.REDIS_URL, ...f.redis },
    backupDir: e.BACKUP_DIR ? path.resolve(e.BACKUP_DIR) : undefined,
    port: e.PORT,
    host: e.HOST,
    adminToken: e.ADMIN_TOKEN,
    viewerToken: e.VIEWER_TOKEN,
    insecureNoAuth: e.PGMAINT_INSECURE_NO_AUTH === '1' || e.PGMAINT_INSECURE_NO_AUTH === 'true',
    logLevel: e.LOG_LEVEL,
    businessTimeZone,
    history: f.history,
    worker: f.worker,
    scheduler: f.scheduler,
    jobs: f.jobs,
    schedules: f.schedules,
    partitions: f.partitions,
    backups: f.backups,
    cache: { ...f.cache, redisUrl: cacheRedisUrl },
    alerts: { ...f.alerts, webhookUrl: e.ALERT_WEBHOOK_URL },
    connections: f.connections,
    objectStore: f.objectStore,
    encryption: f.encryption,
    metricsToken: e.METRICS_TOKEN,
    enqueueRateLimit: e.ENQUEUE_RATE_LIMIT,
  };
  // Secret values stay out of the Config object (which could be logged or serialized):
  // only configSecrets() hands them out, to the object store client.
  SECRETS.set(config, {
    s3: f.objectStore
      ? { accessKeyId: env[f.objectStore.accessKeyIdEnv]!, secretAccessKey: env[f.objectStore.secretAccessKeyEnv]! }
      : undefined,
    keys: Object.fromEntries(
      (f.encryption ? [f.encryption, ...f.encryption.previousKeys] : []).map((k) => [k.keyId, env[k.keyEnv]!]),
    ),
  });
  return config;
}

function parseEnv(env: NodeJS.ProcessEnv): Env {
  // An empty variable (ADMIN_TOKEN= in a compose file) counts as unset.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsedEnv = envSchema.safeParse(present);
  if (!parsedEnv.success) throw new ConfigError(`environment: ${formatIssues(parsedEnv.error.issues)}`);
  return parsedEnv.data;
}

function parseConfigFiles(list: string | undefined): File {
  // Several files, comma-separated, are laid over each other in order (objects merge
  // key by key; a list or value in a later file replaces the earlier one).
  const files = (list ?? '')
    .split(',')
    .map((f) => f.trim())
    .filter(Boolean);
  const fileData = files.reduce<unknown>((merged, file) => mergeConfig(merged, readConfigFile(file) ?? {}), {});
  const parsedFile = fileSchema.safeParse(fileData);
  if (!parsedFile.success) {
    throw new ConfigError(
      `config file${files.length > 1 ? 's' : ''} ${files.join(', ')}: ${formatIssues(parsedFile.error.issues)}`,
    );
  }
  return parsedFile.data;
}

/** main from DATABASE_URL (the file may add settings to it), the others from the file. */
function resolveTargets(e: Env, f: File, env: NodeJS.ProcessEnv): Map<string, TargetConfig> {
  const targets = new Map<string, TargetConfig>();
  // Each refusal names the key where it was given: the target's own, else the file's `governor:`.
  const governor = (own: GovernorKeys | undefined, where: string) => {
    const policy = mergeGovernor(GOVERNOR_DEFAULTS, f.governor, own);
    const at = (key: string) => `${own && key in own ? where : 'governor'}.${key}`;
    const issues = governorIssues(policy, at);
    if (issues.length) throw new ConfigError(issues.map((i) => `${i.path}: ${i.message}`).join('; '));
    return policy;
  };
  const walArchive = (dir: string | undefined) => (dir ? path.resolve(dir) : undefined);
  targets.set(MAIN_TARGET, {
    name: MAIN_TARGET,
    url: e.DATABASE_URL,
    urlSource: 'DATABASE_URL',
    poolSize: DEFAULT_POOL_SIZE,
    walArchiveDir: walArchive(e.WAL_ARCHIVE_DIR),
    backup: { engine: 'native' },
    schedules: 'default',
    repackTables: [],
    cluster: clusterOf({ url: e.DATABASE_URL }),
    governor: governor(undefined, 'governor'),
  });
  for (const [name, t] of Object.entries(f.targets)) {
    if (name === MAIN_TARGET) {
      // DATABASE_URL is main's URL; the file may only add settings to it.
      if (t.url || t.urlEnv) throw new ConfigError('targets.main: its URL is DATABASE_URL; give only settings here');
      const main = targets.get(MAIN_TARGET)!;
      targets.set(MAIN_TARGET, {
        ...main,
        poolSize: t.poolSize,
        walArchiveDir: walArchive(t.walArchiveDir) ?? main.walArchiveDir,
        backup: resolveEngine(t.backup),
        schedules: t.schedules,
        repackTables: t.repackTables,
        cluster: clusterOf({ url: main.url, cluster: t.cluster }),
        governor: governor(t.governor, `targets.${name}.governor`),
      });
      continue;
    }
    if (Boolean(t.url) === Boolean(t.urlEnv))
      throw new ConfigError(`targets.${name}: give exactly one of url or urlEnv`);
    let url = t.url;
    if (t.urlEnv) {
      url = env[t.urlEnv];
      const check = postgresUrl.safeParse(url);
      if (!check.success)
        throw new ConfigError(
          `${t.urlEnv} (targets.${name}.urlEnv): ${url ? check.error.issues[0]?.message : 'is not set'}`,
        );
    }
    targets.set(name, {
      name,
      url: url!,
      urlSource: t.urlEnv ?? `targets.${name}.url`,
      poolSize: t.poolSize,
      walArchiveDir: walArchive(t.walArchiveDir),
      backup: resolveEngine(t.backup),
      schedules: t.schedules,
      repackTables: t.repackTables,
      cluster: clusterOf({ url: url!, cluster: t.cluster }),
      governor: governor(t.governor, `targets.${name}.governor`),
    });
  }
  return targets;
}

/** Partition policies and the run history name known targets; one policy per table and target. */
function checkTargetReferences(f: File, targets: Map<string, TargetConfig>): void {
  f.partitions.forEach((p, i) => {
    if (!targets.has(p.target)) throw new ConfigError(`partitions.${i}.target: unknown target "${p.target}"`);
  });
  const seenPolicies = new Set(f.partitions.map((p) => `${p.target}/${p.table}`));
  if (seenPolicies.size !== f.partitions.length)
    throw new ConfigError('partitions: a table has two policies on the same target');
  if (!targets.has(f.history.target)) throw new ConfigError(`history.target: unknown target "${f.history.target}"`);
}

function resolveBusinessTimeZone(f: File): string {
  const zoneKey = f.businessTimeZone ? 'businessTimeZone' : 'scheduler.timezone';
  if (f.businessTimeZone && f.scheduler.timezone && f.businessTimeZone !== f.scheduler.timezone) {
    throw new ConfigError('scheduler.timezone: the old name of businessTimeZone; give only businessTimeZone');
  }
  const businessTimeZone = f.businessTimeZone ?? f.scheduler.timezone ?? BUSINESS_TIME_ZONE;
  if (!IANAZone.isValidZone(businessTimeZone))
    throw new ConfigError(`${zoneKey}: "${businessTimeZone}" is not an IANA time zone`);
  return businessTimeZone;
}

/** The cache's Redis URL (REDIS_URL unless cache.redisUrlEnv names another), its queries checked. */
function resolveCache(e: Env, f: File, env: NodeJS.ProcessEnv, targets: Map<string, TargetConfig>): string {
  let cacheRedisUrl = e.REDIS_URL;
  if (f.cache.redisUrlEnv) {
    const check = redisUrl.safeParse(env[f.cache.redisUrlEnv]);
    if (!check.success)
      throw new ConfigError(
        `${f.cache.redisUrlEnv} (cache.redisUrlEnv): ` +
          `${env[f.cache.redisUrlEnv] ? check.error.issues[0]?.message : 'is not set'}`,
      );
    cacheRedisUrl = check.data;
  }
  const keys = new Set<string>();
  f.cache.queries.forEach((q, i) => {
    if (!targets.has(q.target)) throw new ConfigError(`cache.queries.${i}.target: unknown target "${q.target}"`);
    if (keys.has(q.key)) throw new ConfigError(`cache.queries.${i}.key: "${q.key}" is declared twice`);
    keys.add(q.key);
  });
  return cacheRedisUrl;
}

/** The variables the file names for the bucket's credentials and the encryption keys are set and valid. */
function checkSecretVariables(f: File, env: NodeJS.ProcessEnv): void {
  if (f.objectStore) {
    for (const [key, name] of [
      ['accessKeyIdEnv', f.objectStore.accessKeyIdEnv],
      ['secretAccessKeyEnv', f.objectStore.secretAccessKeyEnv],
    ] as const) {
      if (!env[name]) throw new ConfigError(`${name} (objectStore.${key}): is not set`);
    }
  }
  if (f.encryption) {
    if (!f.objectStore) throw new ConfigError('encryption: needs objectStore (it encrypts what goes to the bucket)');
    const ids = new Set<string>();
    for (const [i, k] of [f.encryption, ...f.encryption.previousKeys].entries()) {
      const where = i === 0 ? 'encryption.keyEnv' : `encryption.previousKeys.${i - 1}.keyEnv`;
      // An object names its key by id: one id must mean one key.
      if (ids.has(k.keyId))
        throw new ConfigError(`encryption.previousKeys.${i - 1}.keyId: "${k.keyId}" is already given a key`);
      ids.add(k.keyId);
      const text = env[k.keyEnv];
      if (!text) throw new ConfigError(`${k.keyEnv} (${where}): is not set`);
      try {
        parseKey(k.keyId, text);
      } catch (err) {
        throw new ConfigError(`${k.keyEnv} (${where}): ${(err as Error).message}`);
      }
    }
  }
}

/**
 * The cluster a target lives on: its `cluster` name, or host:port of its URL. Targets
 * that are databases of one server share its max_connections, so they share one budget.
 */
export function clusterOf(target: { url: string; cluster?: string }): string {
  if (target.cluster) return target.cluster;
  const u = new URL(target.url);
  const host = (u.hostname || u.searchParams.get('host') || 'localhost').toLowerCase();
  const port = u.port || u.searchParams.get('port') || '5432';
  return `${host}:${port}`;
}

/** A cluster's budget and readings share (connections.clusters.<name>, else connections.*). */
export function clusterBudget(
  config: Pick<Config, 'connections'>,
  cluster: string,
): { budget: number; readings: number } {
  const own = config.connections.clusters[cluster];
  return { budget: own?.budget ?? config.connections.budget, readings: own?.readings ?? config.connections.readings };
}

function checkConnections(c: File['connections'], targets: Map<string, TargetConfig>): void {
  const clusters = [...new Set([...targets.values()].map((t) => t.cluster))];
  for (const name of Object.keys(c.clusters)) {
    if (!clusters.includes(name))
      throw new ConfigError(
        `connections.clusters.${name}: no target is on this cluster (the targets' clusters: ${clusters.join(', ')})`,
      );
  }
  for (const name of clusters) {
    const { budget, readings } = clusterBudget({ connections: c }, name);
    if (readings > budget) {
      const where = c.clusters[name]?.readings !== undefined ? `connections.clusters.${name}` : 'connections';
      throw new ConfigError(
        `${where}.readings: ${readings} is more than the budget of cluster ${name} (${budget}): the readings ` +
          'share the budget',
      );
    }
  }
}

function resolveEngine(b: BackupEngine): BackupEngine {
  return b.configFile ? { ...b, configFile: path.resolve(b.configFile) } : b;
}
