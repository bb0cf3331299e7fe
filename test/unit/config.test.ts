import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { loadConfig } from '../../src/core/config.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { DEMO_CONFIG_FILE } from '../../src/dev/demo.ts';

const base = { DATABASE_URL: 'postgres://app:s3cret@db:5432/dairy', BACKUP_DIR: '/var/backups/pgmaint' };

function configErr(env: Record<string, string | undefined>): string {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('resolves defaults from a minimal environment', () => {
    const c = loadConfig(base);
    expect(c.targets.get('main')?.url).toBe(base.DATABASE_URL);
    expect(c.redis.prefix).toBe('{pgmaint}');
    expect(c.port).toBe(3000);
    expect(c.host).toBe('0.0.0.0');
    expect(c.worker.shutdownTimeoutMs).toBe(30_000);
  });

  it('the schema is the one source of defaults: an empty file and no file give the same config', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-config-'));
    const file = path.join(dir, 'empty.yaml');
    fs.writeFileSync(file, '{}\n');
    const { targets: _a, ...withFile } = loadConfig({ ...base, PGMAINT_CONFIG: file });
    const { targets: _b, ...without } = loadConfig(base);
    expect(withFile).toEqual(without);
    expect(without.worker).toEqual({
      stalledIntervalMs: 30_000,
      lockDurationMs: 30_000,
      shutdownTimeoutMs: 30_000,
      keepCompleted: 500,
      keepFailed: 2000,
      heavyJobsPerCluster: 1,
      heavyWaitMs: 5000,
    });
    expect(without.history).toEqual({ target: 'main', retentionDays: 90, synchronous: false });
    expect(without.businessTimeZone).toBe('Asia/Dhaka');
    // A partly given section keeps the defaults of the keys it leaves out.
    fs.writeFileSync(file, 'worker: { keepFailed: 10 }\nbusinessTimeZone: Europe/Berlin\n');
    const partial = loadConfig({ ...base, PGMAINT_CONFIG: file });
    expect(partial.worker).toMatchObject({ keepFailed: 10, keepCompleted: 500, lockDurationMs: 30_000 });
    expect(partial.businessTimeZone).toBe('Europe/Berlin');
    // The old name still works; both at once must agree; keys nothing reads are gone.
    fs.writeFileSync(file, 'scheduler: { timezone: Asia/Kolkata }\n');
    expect(loadConfig({ ...base, PGMAINT_CONFIG: file }).businessTimeZone).toBe('Asia/Kolkata');
    fs.writeFileSync(file, 'scheduler: { timezone: Asia/Kolkata }\nbusinessTimeZone: Asia/Dhaka\n');
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(
      /scheduler\.timezone: the old name of businessTimeZone/,
    );
    fs.writeFileSync(file, 'jobs: { backup: { policy: {} } }\n');
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(/jobs\.backup: Unrecognized key: "policy"/);
  });

  it('docker-compose.offsite.yml adds MinIO and a config that loads, with secrets only from the environment', () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const offsite = YAML.parse(fs.readFileSync(path.join(root, 'docker-compose.offsite.yml'), 'utf8'));
    expect(Object.keys(offsite.services)).toEqual(expect.arrayContaining(['minio', 'minio-init', 'server', 'worker']));
    for (const svc of ['server', 'worker']) {
      expect(offsite.services[svc].environment).toMatchObject({
        PGMAINT_CONFIG: '/etc/pgmaint/pgmaint.yaml,/etc/pgmaint/offsite.yaml',
      });
      expect(offsite.services[svc].volumes).toContain('./docker/pgmaint-offsite.yaml:/etc/pgmaint/offsite.yaml:ro');
    }
    const c = loadConfig({
      ...base,
      PGMAINT_CONFIG: path.join(root, 'docker/pgmaint-offsite.yaml'),
      MINIO_ROOT_USER: 'pgmaint',
      MINIO_ROOT_PASSWORD: 'not-a-real-password',
      PGMAINT_BACKUP_KEY: Buffer.alloc(32, 7).toString('base64'),
    });
    expect(c.objectStore).toMatchObject({ bucket: 'pgmaint', endpoint: 'https://minio:9000', forcePathStyle: true });
    expect(c.encryption).toMatchObject({ keyId: 'compose', keyEnv: 'PGMAINT_BACKUP_KEY' });
    expect(JSON.stringify(c)).not.toContain('not-a-real-password');
    // Without the key the services refuse to start, naming the variable.
    expect(
      configErr({
        ...base,
        PGMAINT_CONFIG: path.join(root, 'docker/pgmaint-offsite.yaml'),
        MINIO_ROOT_USER: 'x',
        MINIO_ROOT_PASSWORD: 'y',
      }),
    ).toMatch(/PGMAINT_BACKUP_KEY \(encryption\.keyEnv\): is not set/);
  });

  it('docker-compose.yml is the demo: the same config file, a seed, one image, matching PostgreSQL majors', () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const compose = YAML.parse(fs.readFileSync(path.join(root, 'docker-compose.yml'), 'utf8'), { merge: true });
    const mount = `./${path.relative(root, DEMO_CONFIG_FILE)}:/etc/pgmaint/pgmaint.yaml:ro`;
    for (const svc of ['server', 'worker']) {
      const s = compose.services[svc];
      expect(s.environment.PGMAINT_CONFIG, svc).toBe('/etc/pgmaint/pgmaint.yaml');
      expect(s.volumes, svc).toContain(mount);
      expect(s.depends_on.seed, svc).toEqual({ condition: 'service_completed_successfully' });
      expect(s.build, svc).toBe('.');
      expect(s.image, svc).toBe('pgmaint:local');
    }
    expect(compose.services.seed).toMatchObject({ image: 'pgmaint:local', restart: 'no' });
    expect(compose.services.seed.command.slice(0, 2)).toEqual(['seed', '--scale']);
    expect(compose.services.seed.depends_on).toEqual({ postgres: { condition: 'service_healthy' } });
    // The jobs' client tools (pg_dump, pg_basebackup) are the server's major version.
    expect(compose.services.postgres.build).toEqual({ context: 'docker', dockerfile: 'postgres.Dockerfile' });
    const major = /^FROM postgres:(\d+)/m.exec(
      fs.readFileSync(path.join(root, 'docker/postgres.Dockerfile'), 'utf8'),
    )![1];
    expect(fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8')).toMatch(
      new RegExp(`install .*postgresql-${major} `),
    );
    // The file loads, with the demo's policies, cache queries and drill tables.
    const c = loadConfig({ ...base, PGMAINT_CONFIG: DEMO_CONFIG_FILE });
    expect(c.partitions.map((p) => p.table)).toEqual([
      'sales.sale_order',
      'sales.sale_order_line',
      'iot.sensor_reading',
    ]);
    expect(c.cache.queries.map((q) => q.key)).toEqual(['sales:daily:30d', 'products:top:30d', 'herd:summary']);
    expect(c.backups.drillTables).toEqual(['sales.sale_order', 'farm.animal']);
    // The off-site file is laid over it: both files' keys hold.
    const offsite = YAML.parse(fs.readFileSync(path.join(root, 'docker-compose.offsite.yml'), 'utf8'));
    const files = offsite.services.worker.environment.PGMAINT_CONFIG.split(',');
    expect(files).toEqual(['/etc/pgmaint/pgmaint.yaml', '/etc/pgmaint/offsite.yaml']);
    const layered = loadConfig({
      ...base,
      PGMAINT_CONFIG: `${DEMO_CONFIG_FILE},${path.join(root, 'docker/pgmaint-offsite.yaml')}`,
      MINIO_ROOT_USER: 'pgmaint',
      MINIO_ROOT_PASSWORD: 'not-a-real-password',
      PGMAINT_BACKUP_KEY: Buffer.alloc(32, 7).toString('base64'),
    });
    expect(layered.partitions).toHaveLength(3);
    expect(layered.objectStore?.bucket).toBe('pgmaint');
    expect(layered.backups.drillTables).toEqual(['sales.sale_order', 'farm.animal']);
  });

  it('HOST sets the bind address; docker-compose sets it explicitly', () => {
    expect(loadConfig({ ...base, HOST: '127.0.0.1' }).host).toBe('127.0.0.1');
    expect(loadConfig({ ...base, HOST: '::' }).host).toBe('::');
    expect(configErr({ ...base, HOST: '0.0.0.0; rm -rf /' })).toMatch(/HOST: must be an IP address to listen on, /);
    // A name is refused too: it would be resolved at listen time, to whatever it gives then.
    expect(configErr({ ...base, HOST: 'not-an-ip' })).toBe(
      'environment: HOST: must be an IP address to listen on, e.g. 0.0.0.0 (every IPv4 interface) or 127.0.0.1 ' +
        '(got "not-an-ip")',
    );
    const compose = YAML.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../../docker-compose.yml'), 'utf8'));
    expect(compose.services.server.environment.HOST).toBe('0.0.0.0');
  });

  it('names the variable and the problem', () => {
    expect(configErr({ BACKUP_DIR: '/x' })).toMatch(/DATABASE_URL: is required \(not set\)/);
    expect(configErr({ ...base, DATABASE_URL: 'mysql://x' })).toMatch(/DATABASE_URL: must be a postgres/);
    expect(configErr({ ...base, PORT: 'eighty' })).toMatch(/PORT: /);
    expect(configErr({ ...base, ADMIN_TOKEN: 'short' })).toMatch(/ADMIN_TOKEN: must be at least 16 characters/);
    expect(configErr({ ...base, REDIS_URL: 'http://x' })).toMatch(/REDIS_URL: must be a redis/);
  });

  it('reads further targets from a YAML file and names bad keys', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-cfg-'));
    const file = path.join(dir, 'pgmaint.yaml');
    fs.writeFileSync(file, 'targets:\n  reporting:\n    urlEnv: REPORTING_URL\n');
    const c = loadConfig({ ...base, PGMAINT_CONFIG: file, REPORTING_URL: 'postgres://r@h/rep' });
    expect([...c.targets.keys()]).toEqual(['main', 'reporting']);
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(
      /REPORTING_URL \(targets.reporting.urlEnv\): is not set/,
    );

    fs.writeFileSync(file, 'worker:\n  shutdownTimeoutMs: soon\n');
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(/worker\.shutdownTimeoutMs: /);
    fs.writeFileSync(file, 'wokrer: {}\n');
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(/wokrer/);
    fs.writeFileSync(file, 'targets:\n  Bad Name:\n    url: postgres://x/y\n');
    expect(configErr({ ...base, PGMAINT_CONFIG: file })).toMatch(/targets/);
    expect(configErr({ ...base, PGMAINT_CONFIG: path.join(dir, 'missing.yaml') })).toMatch(
      /PGMAINT_CONFIG: cannot read/,
    );
  });

  it('keeps the password out of its own error messages', () => {
    expect(configErr({ ...base, PORT: '-1' })).not.toContain('s3cret');
  });
});
