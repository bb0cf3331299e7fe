// The compose stack, read as Docker reads it (there is no Docker engine here): the files
// parse and interpolate, the required variables stop `docker compose up` with a message
// naming them, every Dockerfile parses and copies what exists, and every job the stack
// schedules or can be asked to run has, in its images, what it runs: pg_repack in the
// database image and the pgmaint image, pgBackRest in both for the off-site profile, and
// that profile's pgBackRest configuration mounted where the services look for it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { defaultSchedules } from '../../schedules/index.ts';
import { loadConfig } from '../../src/core/config.ts';
import { applyScheduleEntries } from '../../src/runner/scheduler.ts';
import {
  aptPackages,
  type Compose,
  type ComposeService,
  interpolate,
  parseDockerfile,
  readCompose,
  root,
  volumeTarget,
} from '../support/compose-files.ts';

const BASE = ['docker-compose.yml'];
const OFFSITE = ['docker-compose.yml', 'docker-compose.offsite.yml'];
/** Every variable the files require, set (the values only need to exist). */
const ENV = {
  POSTGRES_PASSWORD: 'pw',
  ADMIN_TOKEN: 'a'.repeat(24),
  MINIO_ROOT_PASSWORD: 'minio-password',
  PGMAINT_BACKUP_KEY: Buffer.alloc(32, 7).toString('base64'),
  PGBACKREST_REPO1_CIPHER_PASS: 'cipher-pass',
};

const text = (file: string) => fs.readFileSync(path.join(root, file), 'utf8');

/** The error `docker compose` stops with for these files and this environment, or undefined. */
function refusal(files: string[], env: Record<string, string | undefined>): string | undefined {
  try {
    readCompose(files, env);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Where a service's path comes from: a bind-mounted file of the repository, or a named volume. */
function mountOf(svc: ComposeService, target: string) {
  const v = svc.volumes?.find((x) => volumeTarget(x) === target);
  if (!v) return undefined;
  const [source, , mode] = v.split(':');
  return { source: source!, readOnly: mode === 'ro' };
}

describe('the compose files', () => {
  it('docker compose up without POSTGRES_PASSWORD and ADMIN_TOKEN stops with a message naming both', () => {
    // Every use of the two is the required form, with one message that names both.
    const uses = [...text('docker-compose.yml').matchAll(/\$\{(POSTGRES_PASSWORD|ADMIN_TOKEN)([^}]*)\}/g)];
    expect(new Set(uses.map((m) => m[1]))).toEqual(new Set(['POSTGRES_PASSWORD', 'ADMIN_TOKEN']));
    for (const [use, , rest] of uses) {
      expect(rest, use).toMatch(/^:\?/);
      expect(rest, use).toContain('POSTGRES_PASSWORD');
      expect(rest, use).toContain('ADMIN_TOKEN');
    }
    for (const missing of [{}, { POSTGRES_PASSWORD: 'pw' }, { ADMIN_TOKEN: 'a'.repeat(24) }]) {
      const msg = refusal(BASE, missing);
      expect(msg, JSON.stringify(missing)).toMatch(/^required variable (POSTGRES_PASSWORD|ADMIN_TOKEN) is missing/);
      expect(msg).toMatch(/: set POSTGRES_PASSWORD and ADMIN_TOKEN/);
    }
    // An empty value is missing too (the :? form).
    expect(refusal(BASE, { ...ENV, ADMIN_TOKEN: '' })).toMatch(/required variable ADMIN_TOKEN is missing/);
    expect(refusal(BASE, ENV)).toBeUndefined();
    // The off-site profile's own secrets, named the same way.
    for (const name of ['MINIO_ROOT_PASSWORD', 'PGMAINT_BACKUP_KEY', 'PGBACKREST_REPO1_CIPHER_PASS']) {
      expect(refusal(OFFSITE, { ...ENV, [name]: '' })).toMatch(
        new RegExp(`^required variable ${name} is missing a value: set ${name}`),
      );
    }
    expect(refusal(OFFSITE, ENV)).toBeUndefined();
  });

  it('no password, secret or token has a default: each comes from the environment; Grafana stops without its', () => {
    const secretName = /PASSWORD|SECRET|TOKEN|PASS\b|_KEY\b/;
    for (const file of OFFSITE) {
      for (const [use, name, op, value] of text(file).matchAll(/\$\{([A-Za-z0-9_]+)(:?[-+])([^}]*)\}/g)) {
        if (secretName.test(name!)) expect(value, `${file}: ${use} (${op} gives a well-known value)`).toBe('');
      }
    }
    // Nor do the commands the files and the docs show put one in.
    for (const file of [...OFFSITE, 'README.md', 'docs/operations.md', 'docs/monitoring.md'])
      expect(text(file), file).not.toMatch(/(PASSWORD|TOKEN|SECRET)=(change-?me|admin|password|secret)\b/i);
    // Grafana's password is only wanted with its profile (a `:?` would stop every `up`): its entrypoint checks it.
    const grafana = readCompose(BASE, ENV).services.grafana!;
    expect(grafana.profiles).toEqual(['monitoring']);
    expect(grafana.environment?.GF_SECURITY_ADMIN_PASSWORD).toBe('');
    expect(
      readCompose(BASE, { ...ENV, GRAFANA_ADMIN_PASSWORD: 's3cret-pw' }).services.grafana!.environment,
    ).toMatchObject({ GF_SECURITY_ADMIN_PASSWORD: 's3cret-pw' });
    const [cmd, ...args] = grafana.entrypoint!;
    const start = (password: string) =>
      spawnSync(cmd!, args, {
        env: { PATH: process.env.PATH, GF_SECURITY_ADMIN_PASSWORD: password },
        encoding: 'utf8',
      });
    const refused = start('');
    expect(refused.status, refused.stderr).toBe(2);
    expect(refused.stderr).toBe('grafana: set GRAFANA_ADMIN_PASSWORD (openssl rand -base64 24): it has no default\n');
    // With it, the guard hands over to the image's own entrypoint (absent here: sh says it cannot run it).
    const started = start('s3cret-pw');
    expect(started.status).toBe(127);
    expect(started.stderr).toMatch(/\/run\.sh/);
  });

  it('hang together: images or builds that exist, dependencies, volumes and mounted files', () => {
    for (const files of [BASE, OFFSITE]) {
      const compose = readCompose(files, ENV);
      for (const [name, svc] of Object.entries(compose.services)) {
        const where = `${files.join(' + ')}: ${name}`;
        expect(svc.image ?? svc.build, where).toBeDefined();
        if (svc.build) {
          const b = typeof svc.build === 'string' ? { context: svc.build } : svc.build;
          const dockerfile = path.join(b.context, b.dockerfile ?? 'Dockerfile');
          expect(fs.existsSync(path.join(root, dockerfile)), `${where}: ${dockerfile}`).toBe(true);
          expect(() => parseDockerfile(dockerfile), where).not.toThrow();
        }
        const deps = Array.isArray(svc.depends_on) ? svc.depends_on : Object.keys(svc.depends_on ?? {});
        for (const dep of deps) expect(Object.keys(compose.services), `${where} depends on ${dep}`).toContain(dep);
        for (const cond of Object.values(Array.isArray(svc.depends_on) ? {} : (svc.depends_on ?? {}))) {
          expect(['service_started', 'service_healthy', 'service_completed_successfully']).toContain(cond.condition);
        }
        for (const v of svc.volumes ?? []) {
          const source = v.split(':')[0]!;
          if (source.startsWith('.')) expect(fs.existsSync(path.join(root, source)), `${where}: ${v}`).toBe(true);
          else expect(Object.keys(compose.volumes ?? {}), `${where}: ${v}`).toContain(source);
        }
        if (svc.environment) expect(Array.isArray(svc.environment), where).toBe(false);
      }
    }
  });
});

describe('the Dockerfiles', () => {
  it('parse; copy only what the build context has; start as JSON arrays; Node 24 and PostgreSQL 15 on bookworm', () => {
    const ignored = text('.dockerignore').split('\n').filter(Boolean);
    for (const [file, context] of [
      ['Dockerfile', '.'],
      ['docker/postgres.Dockerfile', 'docker'],
    ] as const) {
      const ins = parseDockerfile(file);
      expect(ins[0]!.keyword, file).toBe('FROM');
      for (const i of ins.filter((x) => x.keyword === 'COPY')) {
        for (const src of i.args
          .split(/\s+/)
          .slice(0, -1)
          .filter((w) => !w.startsWith('--'))) {
          expect(fs.existsSync(path.join(root, context, src)), `${file}:${i.line}: ${src}`).toBe(true);
          expect(ignored, `${file}:${i.line}: ${src}`).not.toContain(src);
        }
      }
      for (const i of ins.filter((x) => x.keyword === 'ENTRYPOINT' || x.keyword === 'CMD')) {
        expect(Array.isArray(JSON.parse(i.args)), `${file}:${i.line}`).toBe(true);
      }
      // Package lists are fetched and dropped in the same layer.
      for (const i of ins.filter((x) => x.keyword === 'RUN' && x.args.includes('apt-get install'))) {
        expect(i.args, `${file}:${i.line}`).toMatch(/apt-get update && .*apt-get install -y --no-install-recommends /);
        expect(i.args, `${file}:${i.line}`).toMatch(/&& rm -rf \/var\/lib\/apt\/lists\/\*$/);
      }
    }
    const from = (file: string) => parseDockerfile(file).find((i) => i.keyword === 'FROM')!.args;
    expect(from('Dockerfile')).toBe('node:24-bookworm-slim');
    expect(from('docker/postgres.Dockerfile')).toBe('postgres:15-bookworm');
  });
});

describe('every job the stack runs has what it runs', () => {
  type Engine = 'native' | 'pgbackrest';
  type Needs = { pgmaint?: string[]; postgres?: string[]; note: string };
  const PG = 'postgresql-15';
  /** What each job runs beyond SQL, per image: the worker's (pgmaint) and the database's (postgres). */
  const NEEDS: Record<string, (engine: Engine) => Needs> = {
    'base-backup': (e) =>
      e === 'native'
        ? { pgmaint: [PG, 'lz4'], note: 'pg_basebackup, pg_verifybackup; lz4 unpacks the default compression' }
        : {
            pgmaint: ['pgbackrest'],
            postgres: ['pgbackrest'],
            note: 'pgbackrest backup; archive-push in the database',
          },
    'pitr-drill': (e) =>
      e === 'native'
        ? { pgmaint: [PG, 'lz4'], note: 'a scratch postgres from a base backup' }
        : { pgmaint: [PG, 'pgbackrest'], postgres: ['pgbackrest'], note: 'pgbackrest restore; archive-get' },
    'restore-cluster': (e) =>
      e === 'native'
        ? { pgmaint: [PG, 'lz4'], note: 'a postgres restored from a base backup' }
        : { pgmaint: [PG, 'pgbackrest'], postgres: ['pgbackrest'], note: 'pgbackrest restore; archive-get' },
    'archive-check': (e) =>
      e === 'native'
        ? { note: 'reads the WAL archive volume' }
        : { pgmaint: ['pgbackrest'], postgres: ['pgbackrest'], note: 'pgbackrest check' },
    'prune-backups': (e) =>
      e === 'native' ? { note: 'files' } : { pgmaint: ['pgbackrest'], note: 'pgbackrest expire' },
    backup: () => ({ pgmaint: [PG], note: 'pg_dump, pg_restore --list' }),
    'restore-check': () => ({ pgmaint: [PG], note: 'pg_restore' }),
    'restore-dump': () => ({ pgmaint: [PG], note: 'pg_restore' }),
    'restore-partition': () => ({ pgmaint: [PG, 'zstd'], note: 'zstd -d | pg_restore' }),
    'drop-expired-partitions': () => ({ pgmaint: [PG, 'zstd'], note: 'pg_dump | zstd' }),
    'repack-table': () => ({
      pgmaint: ['postgresql-15-repack'],
      postgres: ['postgresql-15-repack'],
      note: 'the pg_repack client, and the extension of the same version in the database',
    }),
    'query-stats-snapshot': () => ({ note: 'pg_stat_statements, preloaded by the postgres command' }),
    'integrity-check': () => ({ note: 'amcheck (contrib, in the server package)' }),
    'index-maintenance': () => ({ note: 'SQL; pgstattuple (contrib)' }),
    'index-report': () => ({ note: 'SQL' }),
    'vacuum-analyze': () => ({ note: 'SQL' }),
    'create-partitions': () => ({ note: 'SQL' }),
    'daily-sales-rollup': () => ({ note: 'SQL' }),
    'warm-cache': () => ({ note: 'SQL and Redis' }),
    noop: () => ({ note: 'nothing' }),
  };

  const pgmaintPackages = aptPackages(parseDockerfile('Dockerfile'));
  // The official image brings the server (with contrib); its Dockerfile adds the rest.
  const postgresPackages = [PG, ...aptPackages(parseDockerfile('docker/postgres.Dockerfile'))];

  /** The config a worker of this compose stack loads: its environment, its mounted files read from the repository. */
  function workerConfig(compose: Compose) {
    const worker = compose.services.worker!;
    const local = (p: string) => {
      const m = mountOf(worker, p);
      expect(m?.source, `worker mounts ${p}`).toMatch(/^\.\//);
      return path.join(root, m!.source);
    };
    const env = { ...worker.environment } as Record<string, string>;
    env.PGMAINT_CONFIG = env.PGMAINT_CONFIG!.split(',').map(local).join(',');
    return { config: loadConfig(env), local };
  }

  it('the table above covers every job, so a new one needs a decision here', () => {
    expect(Object.keys(NEEDS).sort()).toEqual(jobs.map((j) => j.name).sort());
  });

  for (const [profile, files] of [
    ['docker-compose.yml', BASE],
    ['with docker-compose.offsite.yml', OFFSITE],
  ] as const) {
    it(`${profile}: what it schedules, and any job asked for, finds its tools in the images`, () => {
      const compose = readCompose(files, ENV);
      const { config } = workerConfig(compose);
      const engine = config.targets.get('main')!.backup.engine;
      expect(engine).toBe(files === OFFSITE ? 'pgbackrest' : 'native');
      const scheduled = applyScheduleEntries(defaultSchedules(config), config.schedules, config.businessTimeZone)
        .filter((s) => !config.scheduler.disabled.includes(s.id))
        .map((s) => s.job);
      expect(scheduled).toEqual(expect.arrayContaining(['base-backup', 'pitr-drill', 'archive-check', 'backup']));
      for (const job of [...new Set([...scheduled, ...jobs.map((j) => j.name)])]) {
        const needs = NEEDS[job]!(engine);
        for (const p of needs.pgmaint ?? []) expect(pgmaintPackages, `${job}: ${needs.note}`).toContain(p);
        for (const p of needs.postgres ?? []) expect(postgresPackages, `${job}: ${needs.note}`).toContain(p);
      }
      // Both images install Debian bookworm's builds of the tools they share (pg_repack's
      // client and extension must be one version; both pgBackRest write one repository):
      // the database image keeps the PostgreSQL apt repository's newer builds of them out.
      const shared = ['pgbackrest', 'postgresql-15-repack'];
      for (const p of shared)
        expect([pgmaintPackages.includes(p), postgresPackages.includes(p)], p).toEqual([true, true]);
      const pin = /Package: ([^\n\\]*)\\nPin: origin apt\.postgresql\.org\\nPin-Priority: -1/.exec(
        text('docker/postgres.Dockerfile'),
      );
      expect(pin?.[1]?.split(' ').sort()).toEqual(shared);
      expect(text('Dockerfile')).not.toMatch(/postgresql\.org/);
      // query-stats-snapshot: the database preloads pg_stat_statements.
      expect(compose.services.postgres!.command).toContain('shared_preload_libraries=pg_stat_statements');
    });
  }

  it('the off-site profile wires pgBackRest: one config, the bucket over HTTPS, data directory and socket', () => {
    const compose = readCompose(OFFSITE, ENV);
    const base = readCompose(BASE, ENV);
    const { config, local } = workerConfig(compose);
    const target = config.targets.get('main')!.backup;
    expect(target).toMatchObject({ engine: 'pgbackrest', stanza: 'main' });
    const conf = Object.fromEntries(
      [...fs.readFileSync(local(target.configFile!), 'utf8').matchAll(/^([a-z0-9-]+)=(.*)$/gm)].map((m) => [
        m[1],
        m[2],
      ]),
    );
    expect(text('docker/pgbackrest.conf')).toContain(`[${target.stanza}]`);
    const s = compose.services;
    // The same file at the same path wherever pgBackRest runs; the secrets only in the environment.
    for (const name of ['postgres', 'pgbackrest-stanza', 'server', 'worker']) {
      expect(mountOf(s[name]!, target.configFile!), name).toEqual({
        source: './docker/pgbackrest.conf',
        readOnly: true,
      });
      for (const v of ['PGBACKREST_REPO1_S3_KEY', 'PGBACKREST_REPO1_S3_KEY_SECRET', 'PGBACKREST_REPO1_CIPHER_PASS'])
        expect(s[name]!.environment?.[v], `${name}: ${v}`).toBeTruthy();
      expect(mountOf(s[name]!, path.dirname(conf['repo1-storage-ca-file']!)), name).toEqual({
        source: 'minio-ca',
        readOnly: true,
      });
    }
    expect(conf).toMatchObject({ 'repo1-type': 's3', 'repo1-cipher-type': 'aes-256-cbc', 'log-level-file': 'off' });
    expect(Object.keys(conf).filter((k) => /key|pass|secret/.test(k))).toEqual([]);
    expect(s.server!.environment!.PGBACKREST_REPO1_CIPHER_PASS).toBe(ENV.PGBACKREST_REPO1_CIPHER_PASS);
    // The repository and the dumps share the bucket, over HTTPS, trusting the stack's CA.
    expect(config.objectStore).toMatchObject({
      bucket: conf['repo1-s3-bucket'],
      endpoint: `https://${conf['repo1-s3-endpoint']}:${conf['repo1-storage-port']}`,
      caFile: conf['repo1-storage-ca-file'],
    });
    expect(Object.keys(s)).toContain(conf['repo1-s3-endpoint']);
    expect(s.minio!.command).toEqual(expect.arrayContaining(['--certs-dir', '/certs']));
    expect(mountOf(s.minio!, '/certs')).toEqual({ source: 'minio-certs', readOnly: true });
    expect(s['minio-certs']!.entrypoint).toEqual(['sh', '/etc/pgmaint/minio-certs.sh', '/certs', '/ca']);
    expect(mountOf(s['minio-certs']!, '/ca')?.source).toBe('minio-ca');
    // The database archives WAL with archive-push; its other settings are the stack's.
    const archive = (cmd: string[]) => cmd.find((c) => c.startsWith('archive_command='));
    expect(archive(s.postgres!.command!)).toBe(`archive_command=pgbackrest --stanza=${target.stanza} archive-push %p`);
    expect(s.postgres!.command!.filter((c) => c !== archive(s.postgres!.command!))).toEqual(
      base.services.postgres!.command!.filter((c) => c !== archive(base.services.postgres!.command!)),
    );
    // The stanza exists before the server and workers start.
    expect(s['pgbackrest-stanza']!.entrypoint).toEqual(['pgbackrest', `--stanza=${target.stanza}`, 'stanza-create']);
    for (const name of ['server', 'worker'])
      expect((s[name]!.depends_on as Record<string, unknown>)['pgbackrest-stanza'], name).toEqual({
        condition: 'service_completed_successfully',
      });
    // pgBackRest reads the data directory and talks to the server through its socket, as
    // the postgres user (999 in both images): the workers run as root so pgmaint switches to it.
    for (const name of ['pgbackrest-stanza', 'worker']) {
      expect(mountOf(s[name]!, conf['pg1-path']!), name).toEqual({ source: 'pgdata', readOnly: true });
      expect(mountOf(s[name]!, conf['pg1-socket-path']!), name).toEqual({ source: 'pgsocket', readOnly: false });
    }
    expect(mountOf(s.postgres!, conf['pg1-path']!)?.source).toBe('pgdata');
    expect(mountOf(s.postgres!, conf['pg1-socket-path']!)?.source).toBe('pgsocket');
    expect(s.worker!.user).toBe('root');
    expect(s['pgbackrest-stanza']!.user).toBe('postgres');
    expect(parseDockerfile('Dockerfile').map((i) => i.args)).toContainEqual(
      expect.stringMatching(/^groupadd -r -g 999 postgres && useradd -r -u 999 -g postgres /),
    );
    expect(interpolate('$$MINIO_ROOT_USER', {})).toBe('$MINIO_ROOT_USER');
  });
});
