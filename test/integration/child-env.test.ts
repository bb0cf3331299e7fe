// What the tools pgmaint runs can see: every child process (pg_dump, pg_restore,
// pg_basebackup, pg_verifybackup, pg_repack, tar, zstd, the drill's pg_ctl and the scratch
// server's restore_command, pgBackRest) is a wrapper here that records its environment
// before it runs the real tool. With tokens, a DATABASE_URL with a password, S3 credentials
// and an encryption key in pgmaint's environment, none of them reaches any child; the
// password goes through a mode-0600 passfile that is gone after the run, and PGBACKREST_*
// options reach pgBackRest only.
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBackupCatalog } from '../../src/backup/target-catalog.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

const REAL_BINDIR = '/usr/lib/postgresql/15/bin';
/** Tools found through PATH (the restore_command's cp, tar's lz4, …). */
const PATH_TOOLS = ['pgbackrest', 'tar', 'cp', 'zstd', 'lz4', 'chown'];

const random = () => randomBytes(12).toString('hex');
// A password with the characters a passfile must escape.
const password = `pw:${random()}\\x`;
const secrets = {
  ADMIN_TOKEN: random(),
  VIEWER_TOKEN: random(),
  AWS_SECRET_ACCESS_KEY: random(),
  PGMAINT_S3_SECRET: random(),
  PGMAINT_BACKUP_KEY: randomBytes(32).toString('base64'),
  PGPASSWORD: random(),
};
const cipherPass = random();

let h: Harness;
let rt: Runtime;
let records: string;
let databaseUrl: string;

/** A directory of wrappers: each records its environment (and its passfile's mode), then execs the real tool. */
function wrappers(dir: string, tools: Record<string, string>): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  for (const [name, real] of Object.entries(tools)) {
    fs.writeFileSync(
      path.join(dir, name),
      `#!/bin/sh\nr="${records}/${name}.$$"\ncat /proc/$$/environ > "$r.env"\n` +
        `if [ -n "$PGPASSFILE" ]; then stat -c '%a %n' "$PGPASSFILE" > "$r.passfile"; fi\nexec "${real}" "$@"\n`,
      { mode: 0o755 },
    );
  }
}

/** The recorded environments: tool name, and its variables. */
function recorded(): { tool: string; file: string; raw: string; env: Map<string, string> }[] {
  return fs
    .readdirSync(records)
    .filter((f) => f.endsWith('.env'))
    .map((f) => {
      const raw = fs.readFileSync(path.join(records, f), 'utf8');
      const env = new Map(
        raw
          .split('\0')
          .filter(Boolean)
          .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as [string, string]),
      );
      return { tool: f.split('.')[0]!, file: f, raw, env };
    });
}

beforeAll(async () => {
  h = await createHarness('child_env');
  const { pg: cluster, pool: db } = await h.ownCluster();
  // A role that must give its password (scram), on the database and for replication.
  await db.query(`create role pgmaint_pw login superuser password '${password.replace(/'/g, "''")}'`);
  const hba = path.join(cluster.dataDir, 'pg_hba.conf');
  fs.writeFileSync(
    hba,
    'host all pgmaint_pw 127.0.0.1/32 scram-sha-256\nhost replication pgmaint_pw 127.0.0.1/32 scram-sha-256\n' +
      fs.readFileSync(hba, 'utf8'),
  );
  await db.query('select pg_reload_conf()');
  databaseUrl = `postgres://pgmaint_pw:${encodeURIComponent(password)}@127.0.0.1:${cluster.port}/dairy`;
  await db.query(`create extension pg_repack;
    create table public.reading (id bigint generated always as identity primary key, v text);
    insert into public.reading (v) select repeat('r', 100) from generate_series(1, 5000) g;
    delete from public.reading where id % 2 = 0;
    create schema ret;
    create table ret.daily (ts timestamptz not null, v int) partition by range (ts);
    create table ret.daily_p20260101 partition of ret.daily for values from ('2026-01-01') to ('2026-01-02');
    create table ret.daily_p20260102 partition of ret.daily for values from ('2026-01-02') to ('2026-01-03');
    insert into ret.daily select '2026-01-01'::timestamptz + make_interval(mins => g), g
      from generate_series(1, 2000) g;`);

  records = path.join(h.dir, 'env-records');
  fs.mkdirSync(records);
  fs.chmodSync(records, 0o1777); // pg_ctl and pgBackRest record as the postgres OS user
  const binDir = path.join(h.dir, 'wrapped-bin');
  const pathDir = path.join(h.dir, 'wrapped-path');
  wrappers(binDir, Object.fromEntries(fs.readdirSync(REAL_BINDIR).map((t) => [t, path.join(REAL_BINDIR, t)])));
  wrappers(
    pathDir,
    Object.fromEntries(
      PATH_TOOLS.map((t) => [
        t,
        execFileSync('sh', ['-c', `command -v ${t}`])
          .toString()
          .trim(),
      ]),
    ),
  );

  // pgBackRest's repository settings come from PGBACKREST_* variables, its cipher pass among them.
  const br = path.join(h.dir, 'pgbackrest');
  for (const d of ['repo', 'log', 'lock']) fs.mkdirSync(path.join(br, d), { recursive: true });
  const brConf = path.join(br, 'pgbackrest.conf');
  fs.writeFileSync(
    brConf,
    `[global]\nlog-path=${br}/log\nlock-path=${br}/lock\nlog-level-console=warn\nlog-level-file=off\n\n` +
      `[offsite]\npg1-path=${cluster.dataDir}\npg1-port=${cluster.port}\npg1-socket-path=${cluster.socketDir}\n`,
    { mode: 0o600 },
  );
  execFileSync('chown', ['-R', 'postgres:postgres', br]);

  // pgmaint's own environment, as a deployment has it.
  Object.assign(process.env, secrets, {
    DATABASE_URL: databaseUrl,
    OFFSITE_DATABASE_URL: databaseUrl,
    AWS_ACCESS_KEY_ID: random(),
    PGBACKREST_REPO1_PATH: path.join(br, 'repo'),
    PGBACKREST_REPO1_CIPHER_TYPE: 'aes-256-cbc',
    PGBACKREST_REPO1_CIPHER_PASS: cipherPass,
    PG_BINDIR: binDir,
    PATH: `${pathDir}:${process.env.PATH}`,
  });
  h.configFile({
    targets: {
      offsite: {
        urlEnv: 'OFFSITE_DATABASE_URL',
        backup: { engine: 'pgbackrest', stanza: 'offsite', configFile: brConf },
      },
    },
    partitions: [{ table: 'ret.daily', column: 'ts', interval: 'day', retention: '1 day' }],
    backups: { scratchDir: path.join(h.dir, 'scratch') },
    jobs: { 'drop-expired-partitions': { attempts: 1 } },
  });
  rt = h.runtime({ schedules: [], env: { ...secrets, DATABASE_URL: databaseUrl, PG_BINDIR: binDir } });
  await rt.history.migrate();
  startWorkers(rt);
});
afterAll(() => h.close());

async function run(job: string, payload: object = {}) {
  const { job: j } = await rt.queues.enqueue(job, payload);
  const { state, job: done } = await waitForFinished(rt.queues.get(job), j.id!, 120_000);
  expect(state, `${job}: ${done.failedReason}`).toBe('completed');
  return done.returnvalue as Record<string, any>;
}

describe('the environment of child processes', () => {
  it('the role must give its password (the tools below cannot connect without it)', async () => {
    const url = new URL(databaseUrl);
    url.password = 'wrong';
    const c = new pg.Client({ connectionString: url.toString() });
    await expect(c.connect()).rejects.toThrow(/password authentication failed/);
  });

  it('holds no token, password or key of pgmaint in any tool a job runs; PGBACKREST_* only in pgBackRest', async () => {
    await run('backup');
    await run('restore-check');
    await run('base-backup');
    await run('pitr-drill');
    const retention = await run('drop-expired-partitions', { now: '2026-01-10T00:00:00Z' });
    expect(retention.policies[0].archives.length).toBeGreaterThan(0);
    expect((await run('repack-table', { tables: ['public.reading'] })).repacked).toHaveLength(1);
    // The engine's commands, and the server's read of the stanza for /api/backups and /metrics.
    await run('prune-backups', { target: 'offsite' });
    const catalog = await readBackupCatalog(h.backupDir, rt.config.targets.get('offsite')!);
    // The cipher type came from PGBACKREST_REPO1_CIPHER_TYPE: the options reached pgBackRest.
    expect(catalog.api.pgbackrest).toMatchObject({ stanza: 'offsite', cipher: 'aes-256-cbc' });

    const all = recorded();
    const tools = new Set(all.map((r) => r.tool));
    const expected = ['pg_dump', 'pg_restore', 'pg_basebackup', 'pg_verifybackup', 'pg_ctl', 'pg_repack'];
    expected.push('tar', 'lz4', 'cp', 'zstd', 'pgbackrest', ...(process.getuid?.() === 0 ? ['chown'] : []));
    for (const tool of expected) expect(tools, tool).toContain(tool);

    const values = [
      ...Object.values(secrets),
      password,
      encodeURIComponent(password),
      databaseUrl,
      process.env.AWS_ACCESS_KEY_ID!,
    ];
    for (const r of all) {
      for (const v of values) expect(r.raw.includes(v), `${r.file} holds a secret (${r.raw.split('\0')})`).toBe(false);
      for (const name of [...Object.keys(secrets), 'DATABASE_URL', 'OFFSITE_DATABASE_URL', 'PG_BINDIR'])
        expect(r.env.has(name), `${r.file} has ${name}`).toBe(false);
      // PGBACKREST_* reach pgBackRest; the cp of the native drill's restore_command is not pgBackRest's.
      if (r.tool !== 'pgbackrest')
        expect(
          [...r.env.keys()].filter((k) => k.startsWith('PGBACKREST_')),
          r.file,
        ).toEqual([]);
      else expect(r.env.get('PGBACKREST_REPO1_CIPHER_PASS'), r.file).toBe(cipherPass);
      expect(r.env.get('PATH'), r.file).toBeTruthy();
    }

    // The tools that connect read the password from a passfile of their own: mode 0600, gone after the run.
    const connecting = all.filter((r) => ['pg_dump', 'pg_restore', 'pg_basebackup', 'pg_repack'].includes(r.tool));
    const passfiles = connecting.filter((r) => r.env.has('PGPASSFILE'));
    expect(new Set(passfiles.map((r) => r.tool))).toEqual(
      new Set(['pg_dump', 'pg_restore', 'pg_basebackup', 'pg_repack']),
    );
    for (const r of passfiles) {
      const file = r.env.get('PGPASSFILE')!;
      const stat = fs.readFileSync(path.join(records, r.file.replace(/\.env$/, '.passfile')), 'utf8').trim();
      expect(stat, r.file).toBe(`600 ${file}`);
      expect(fs.existsSync(file), `${file} is still there`).toBe(false);
    }
  });
});
