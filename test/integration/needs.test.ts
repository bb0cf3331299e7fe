// Jobs declare what they need of the machine (`needs`, src/runner/needs.ts). The worker
// entry points derive their queues from it, and a worker refuses at start a queue whose
// needs it lacks. The routing fault this closes: drop-expired-partitions writes its archives
// to BACKUP_DIR/partitions, yet workers/maintenance.ts (a machine without BACKUP_DIR) took it.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { backupDirOf, loadConfig } from '../../src/core/config.ts';
import { lackingNeeds, needsMachine } from '../../src/runner/needs.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, type Spawned, waitUntil } from '../support/harness.ts';

/** One policy that drops partitions and archives them first (archive: true is the default). */
const ARCHIVING = { partitions: [{ table: 'app.events', column: 'ts', interval: 'day', retention: '30 days' }] };
const REAL_BIN = '/usr/lib/postgresql/15/bin';

let h: Harness;
let rt: Runtime;
let aFile: string;

beforeAll(async () => {
  h = await createHarness('needs');
  h.configFile(ARCHIVING);
  rt = h.runtime({ schedules: [] });
  aFile = path.join(h.dir, 'a-file');
  fs.writeFileSync(aFile, 'not a directory\n');
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

const withNeeds = jobs.filter(needsMachine).map((j) => j.name);

/** The queues a worker process serves, as its start line says. */
async function servedQueues(w: Spawned): Promise<string[]> {
  await w.waitFor(/worker started/);
  const line = w
    .output()
    .split('\n')
    .find((l) => l.includes('"msg":"worker started"'))!;
  return JSON.parse(line).queues;
}

/** The exit status of a process expected to refuse at start; "started" if it started instead. */
function refusal(w: Spawned): Promise<number | null | 'started'> {
  return Promise.race([w.exited, w.waitFor(/worker started/).then(() => 'started' as const)]);
}

describe('the routing fault: drop-expired-partitions writes archives to BACKUP_DIR', () => {
  it('workers/maintenance.ts starts without BACKUP_DIR and serves only the jobs without needs', async () => {
    const w = h.spawnPgmaint([], { BACKUP_DIR: '' }, 'workers/maintenance.ts');
    const queues = await servedQueues(w);
    expect(queues).not.toContain('drop-expired-partitions');
    expect(queues).toEqual(expect.arrayContaining(['create-partitions', 'vacuum-analyze', 'noop']));
    expect(queues.filter((q) => withNeeds.includes(q))).toEqual([]);
    // Redis agrees: every served queue has its worker, drop-expired-partitions none.
    await waitUntil(
      async () => (await Promise.all(queues.map((q) => rt.queues.get(q).getWorkersCount()))).every((n) => n > 0),
      20_000,
      'the worker connections',
    );
    expect(await rt.queues.get('drop-expired-partitions').getWorkersCount()).toBe(0);
  });

  it('workers/maintenance.ts leaves drop-expired-partitions alone even where BACKUP_DIR is set', async () => {
    const queues = await servedQueues(h.spawnPgmaint([], {}, 'workers/maintenance.ts'));
    expect(queues).not.toContain('drop-expired-partitions');
  });

  it('workers/backup.ts serves drop-expired-partitions and every other job that declares needs', async () => {
    expect(withNeeds).toContain('drop-expired-partitions');
    const queues = await servedQueues(h.spawnPgmaint([], {}, 'workers/backup.ts'));
    expect(queues).toContain('drop-expired-partitions');
    expect([...queues].sort()).toEqual([...withNeeds].sort());
  });

  it('a worker forced onto drop-expired-partitions without BACKUP_DIR refuses at start, naming backupDir', async () => {
    const w = h.spawnPgmaint(['worker', '--queues', 'drop-expired-partitions'], { BACKUP_DIR: '' });
    expect(await refusal(w)).toBe(2);
    const line =
      'pgmaint: --queues: drop-expired-partitions needs backupDir: set BACKUP_DIR ' +
      '(its partition archives are written there)';
    expect(w.output().split('\n')).toContain(line);
  });

  it('and with a BACKUP_DIR it cannot write here (below a file), naming the path', async () => {
    const w = h.spawnPgmaint(['worker', '--queues', 'noop,drop-expired-partitions'], {
      BACKUP_DIR: path.join(aFile, 'backups'),
    });
    expect(await refusal(w)).toBe(2);
    expect(w.output()).toContain(
      `pgmaint: --queues: drop-expired-partitions needs backupDir: BACKUP_DIR ${aFile}/backups is not writable here, ` +
        `${aFile} is not a directory: set BACKUP_DIR to a directory this process can write`,
    );
  });

  it('workers/backup.ts on a machine without BACKUP_DIR refuses at start, naming the need and variable', async () => {
    const w = h.spawnPgmaint([], { BACKUP_DIR: '' }, 'workers/backup.ts');
    expect(await refusal(w)).toBe(2);
    expect(w.output()).toMatch(
      /^pgmaint: workers\/backup\.ts: archive-check, backup, .* need backupDir: set BACKUP_DIR/m,
    );
    expect(w.output()).toMatch(/drop-expired-partitions.* need backupDir/);
  });

  it('the all-jobs worker without BACKUP_DIR serves the rest and says which queues it leaves, and why', async () => {
    const w = h.spawnPgmaint(['worker'], { BACKUP_DIR: '' });
    const queues = await servedQueues(w);
    const needingBackupDir = jobs.filter((j) => j.needs?.backupDir).map((j) => j.name);
    expect(needingBackupDir).toContain('drop-expired-partitions');
    expect(queues.filter((q) => needingBackupDir.includes(q))).toEqual([]);
    // repack-table needs only PG_BINDIR's pg_repack, which this machine has.
    expect(queues).toEqual(expect.arrayContaining(['noop', 'create-partitions', 'repack-table']));
    const warning = w
      .output()
      .split('\n')
      .find((l) => l.includes('not serving'));
    expect(JSON.parse(warning!)).toMatchObject({
      level: 40,
      left: expect.arrayContaining(['drop-expired-partitions', 'backup']),
      msg: expect.stringMatching(/need backupDir: set BACKUP_DIR/),
    });
  });

  it('the server still requires BACKUP_DIR (the API and the alerts list backups there)', async () => {
    const w = h.spawnPgmaint(['server'], { BACKUP_DIR: '' });
    expect(await w.exited).toBe(2);
    expect(w.output()).toMatch(/^pgmaint: BACKUP_DIR: is required \(not set\)/m);
  });
});

describe('each need, as a worker checks it at start', () => {
  const configFile = (content: object) => {
    const file = path.join(h.dir, `needs-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(file, JSON.stringify(content));
    return file;
  };
  /** What these jobs lack under this environment and config file (the probes read `env` too). */
  const lacks = (names: string[], env: Record<string, string>, file: object = {}) => {
    const full = { DATABASE_URL: h.dbUrl, PG_BINDIR: REAL_BIN, PATH: process.env.PATH!, ...env };
    const config = loadConfig({ ...full, PGMAINT_CONFIG: configFile(file) });
    return lackingNeeds(
      jobs.filter((j) => names.includes(j.name)),
      config,
      full,
    );
  };

  it('backupDir: BACKUP_DIR set, and a directory this process can write or create', async () => {
    expect(await lacks(['backup'], {})).toEqual([
      {
        job: 'backup',
        need: 'backupDir',
        variable: 'BACKUP_DIR',
        message: 'set BACKUP_DIR',
        why: 'dumps are written there',
      },
    ]);
    expect(await lacks(['backup'], { BACKUP_DIR: path.join(aFile, 'x') })).toMatchObject([
      { need: 'backupDir', variable: 'BACKUP_DIR', message: expect.stringContaining(`${aFile} is not a directory`) },
    ]);
    expect(await lacks(['backup'], { BACKUP_DIR: aFile })).toMatchObject([{ need: 'backupDir' }]);
    expect(await lacks(['backup'], { BACKUP_DIR: h.backupDir })).toEqual([]);
    // Not made yet: the job makes it.
    expect(await lacks(['backup'], { BACKUP_DIR: path.join(h.dir, 'later', 'backups') })).toEqual([]);
    expect(() => backupDirOf(loadConfig({ DATABASE_URL: h.dbUrl }))).toThrow(/^BACKUP_DIR: is required \(not set\)/);
  });

  it('walArchive: each native target’s WAL directory readable here, when one is configured', async () => {
    const dir = h.backupDir;
    expect(await lacks(['archive-check'], { BACKUP_DIR: dir, WAL_ARCHIVE_DIR: path.join(h.dir, 'no-wal') })).toEqual([
      expect.objectContaining({
        need: 'walArchive',
        variable: 'WAL_ARCHIVE_DIR',
        message: expect.stringMatching(/no-wal \(target main\) cannot be read here, ENOENT: set WAL_ARCHIVE_DIR/),
      }),
    ]);
    const other = { targets: { other: { url: h.dbUrl, walArchiveDir: aFile } } };
    expect(await lacks(['pitr-drill'], { BACKUP_DIR: dir }, other)).toEqual([
      expect.objectContaining({
        need: 'walArchive',
        variable: 'targets.other.walArchiveDir',
        message: expect.stringContaining('is not a directory'),
      }),
    ]);
    expect(await lacks(['archive-check', 'pitr-drill', 'prune-backups'], { BACKUP_DIR: dir })).toEqual([]);
    const walDir = path.join(h.dir, 'wal');
    fs.mkdirSync(walDir, { recursive: true });
    expect(await lacks(['archive-check'], { BACKUP_DIR: dir, WAL_ARCHIVE_DIR: walDir })).toEqual([]);
  });

  it('pgBinaries: each tool the job runs is an executable in PG_BINDIR', async () => {
    const empty = path.join(h.dir, 'empty-bin');
    fs.mkdirSync(empty, { recursive: true });
    fs.writeFileSync(path.join(empty, 'pg_dump'), 'not executable', { mode: 0o644 });
    const env = { BACKUP_DIR: h.backupDir, PG_BINDIR: empty };
    expect(await lacks(['backup', 'repack-table'], env)).toEqual([
      expect.objectContaining({
        job: 'backup',
        need: 'pgBinaries',
        variable: 'PG_BINDIR',
        message:
          `pg_dump, pg_restore are not in ${empty}: ` +
          "set PG_BINDIR to the directory of PostgreSQL's binaries that holds them",
      }),
      expect.objectContaining({ job: 'repack-table', message: expect.stringMatching(/^pg_repack is not in /) }),
    ]);
    expect(await lacks(['backup', 'repack-table', 'pitr-drill', 'base-backup'], { BACKUP_DIR: h.backupDir })).toEqual(
      [],
    );
  });

  it('engineTools: its programs on PATH, when a target uses an engine that runs any (pgbackrest)', async () => {
    const noTools = path.join(h.dir, 'no-tools');
    fs.mkdirSync(noTools, { recursive: true });
    const env = { BACKUP_DIR: h.backupDir, PATH: noTools };
    const engine = { targets: { main: { backup: { engine: 'pgbackrest', stanza: 'main' } } } };
    expect(await lacks(['base-backup'], env, engine)).toEqual([
      expect.objectContaining({
        need: 'engineTools',
        variable: 'PATH',
        message: expect.stringMatching(/^pgbackrest is not on PATH \(target main uses the pgbackrest engine\)/),
      }),
    ]);
    expect(await lacks(['base-backup'], env)).toEqual([]);
    expect(await lacks(['base-backup'], { BACKUP_DIR: h.backupDir, PATH: '/usr/bin' }, engine)).toEqual([]);
  });

  it('objectStore: its credentials’ variables set, when a bucket is configured', async () => {
    const bucket = {
      objectStore: { bucket: 'pgmaint-test', accessKeyIdEnv: 'NEEDS_KEY_ID', secretAccessKeyEnv: 'NEEDS_SECRET' },
    };
    const config = loadConfig({
      DATABASE_URL: h.dbUrl,
      BACKUP_DIR: h.backupDir,
      NEEDS_KEY_ID: 'id',
      NEEDS_SECRET: 'secret',
      PGMAINT_CONFIG: configFile(bucket),
    });
    const restoreCheck = jobs.filter((j) => j.name === 'restore-check');
    const env = { PG_BINDIR: REAL_BIN, NEEDS_KEY_ID: 'id' };
    expect(await lackingNeeds(restoreCheck, config, env)).toEqual([
      expect.objectContaining({
        need: 'objectStore',
        variable: 'NEEDS_SECRET',
        message: 'set NEEDS_SECRET (objectStore.secretAccessKeyEnv)',
      }),
    ]);
    expect(await lackingNeeds(restoreCheck, config, { ...env, NEEDS_SECRET: 'secret' })).toEqual([]);
    expect(await lacks(['restore-check'], { BACKUP_DIR: h.backupDir })).toEqual([]);
  });

  it('drop-expired-partitions needs BACKUP_DIR, its tools and the bucket only when some policy archives', async () => {
    const bare = { PG_BINDIR: path.join(h.dir, 'no-tools') };
    expect((await lacks(['drop-expired-partitions'], bare, ARCHIVING)).map((l) => l.need)).toEqual([
      'backupDir',
      'pgBinaries',
    ]);
    const notArchiving = { partitions: [{ ...ARCHIVING.partitions[0], archive: false }] };
    expect(await lacks(['drop-expired-partitions'], bare, notArchiving)).toEqual([]);
    const noRetention = { partitions: [{ table: 'app.events', column: 'ts', interval: 'day' }] };
    expect(await lacks(['drop-expired-partitions'], bare, noRetention)).toEqual([]);
    expect(await lacks(['drop-expired-partitions'], bare)).toEqual([]);
  });
});

describe('the docs say what the job files declare', () => {
  const doc = (file: string) => fs.readFileSync(path.join(import.meta.dirname, '../..', 'docs', file), 'utf8');
  const names = (cell: string) => [...cell.matchAll(/`([A-Za-z_-]+)`/g)].map((m) => m[1]!);
  const row = (text: string, first: string) =>
    text
      .split('\n')
      .find((l) => l.startsWith(`| ${first} |`))!
      .split(' | ');

  it('operations.md: the jobs of workers/backup.ts and workers/maintenance.ts', () => {
    const ops = doc('operations.md');
    expect(names(row(ops, '`workers/backup.ts`')[1]!)).toEqual([...withNeeds].sort());
    const without = jobs.filter((j) => !needsMachine(j)).map((j) => j.name);
    expect(names(row(ops, '`workers/maintenance.ts`')[1]!)).toEqual(without.sort());
  });

  it('architecture.md: each job’s needs', () => {
    const arch = doc('architecture.md');
    for (const job of jobs.filter(needsMachine)) {
      const declared = Object.keys(job.needs!);
      const cell = row(arch, `\`${job.name}\``)[1]!;
      const listed = names(cell).filter((n) =>
        ['backupDir', 'walArchive', 'pgBinaries', 'engineTools', 'objectStore'].includes(n),
      );
      expect(listed, job.name).toEqual(declared);
      for (const tool of job.needs!.pgBinaries?.tools ?? []) expect(cell, job.name).toContain(`\`${tool}\``);
    }
  });
});
