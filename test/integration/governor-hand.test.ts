// The load governor by hand (docs/governor.md): `throttle` holds a running
// drop-expired-partitions before its next partition, and inside its archive's pg_dump
// (the server's COPY then waits in ClientWrite); after `resume` its result is an
// unthrottled run's. A maintenance pause holds a scheduled run, which starts once the pause
// expires on its own. Bad governor settings are refused naming the key: in the config at
// start, in payloads and in throttle/resume requests (400), from a viewer (403) and from a
// cookie of another origin (403).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { loadConfig } from '../../src/core/config.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { binPath } from '../../src/core/proc.ts';
import { readGovernor } from '../../src/governor/board.ts';
import { Controls } from '../../src/governor/controls.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import type { Schedule } from '../../src/runner/scheduler.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  type Harness,
  VIEWER_TOKEN,
  waitForFinished,
  waitUntil,
} from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let app: ReturnType<typeof createApp>;
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const viewer = { Authorization: `Bearer ${VIEWER_TOKEN}` };
const NOW = '2026-01-05T12:00:00Z';

const schedule: Schedule = {
  id: 'vacuum-load',
  job: 'vacuum-analyze',
  cron: '0 3 * * *',
  tz: 'UTC',
  payload: { schemas: ['load'], thresholds: { minModTuples: 0, modRatio: 0 } },
  // A run started later than the tolerance would be skipped as missed: a pause must not make it so.
  catchUp: 'none',
};

/** Two tables alike, each with five daily partitions; the first one large enough to fill the dump's pipes. */
async function makeTable(schema: string): Promise<void> {
  await h.admin.query(`create schema ${schema};
    create table ${schema}.days (ts timestamptz not null, v text) partition by range (ts);`);
  for (let d = 1; d <= 5; d++) {
    await h.admin.query(
      `create table ${schema}.days_p2026010${d} partition of ${schema}.days for values from ` +
        `('2026-01-0${d} 00:00+00') to ('2026-01-0${d + 1} 00:00+00')`,
    );
    // About 30 MB of COPY text in the first partition: more than the pipe and socket buffers hold.
    const rows = d === 1 ? 250_000 : 100;
    await h.admin.query(
      `insert into ${schema}.days select '2026-01-0${d} 06:00+00'::timestamptz + g * interval '1 ms', ` +
        `repeat(md5(g::text), 3) from generate_series(1, ${rows}) g`,
    );
  }
}

beforeAll(async () => {
  h = await createHarness('gov_hand');
  await makeTable('ret');
  await makeTable('calm');
  await h.admin.query('create schema load; create table load.a (id int primary key, v text);');
  h.configFile({
    partitions: ['ret.days', 'calm.days'].map((table) => ({
      table,
      column: 'ts',
      interval: 'day',
      retention: '1 day',
      lockTimeout: '120s',
    })),
    governor: {
      checkEveryMs: 100,
      maxActive: null,
      maxLockWaits: null,
      maxReplicaLagSeconds: null,
      // The 30 MB dump once resumed goes flat out (its rate: governor-gentle.test.ts).
      streamMaxRate: null,
    },
    scheduler: { lateToleranceMs: 1000 },
    history: { synchronous: true },
    jobs: { 'drop-expired-partitions': { attempts: 1 }, 'vacuum-analyze': { attempts: 1 } },
  });
  rt = h.runtime({ schedules: [schedule] });
  await rt.history.migrate();
  app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
  startWorkers(rt, ['drop-expired-partitions', 'vacuum-analyze']);
}, 120_000);
afterAll(() => h.close());

const governor = () => readGovernor(rt.queues.connection, rt.config.redis.prefix);
const logsOf = async (queue: string, id: string) => (await rt.queues.get(queue).getJobLogs(id)).logs.join('\n');
const throttle = (body: object) => request(app).post('/api/governor/throttle').set(admin).send(body);
const resume = (body: object) => request(app).post('/api/governor/resume').set(admin).send(body);

/** A session of pgmaint's (not pg_dump's) waiting on a lock in a statement like `like`. */
const ourWait = (like: string) => async () =>
  (
    await h.admin.query(
      `select 1 from pg_stat_activity where application_name = 'pgmaint' and wait_event_type = 'Lock' and ` +
        'query ilike $1',
      [like],
    )
  ).rowCount;

const attached = async (schema: string) =>
  (
    await h.admin.query(
      `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = ` +
        `'${schema}.days'::regclass order by 1`,
    )
  ).rows.map((r) => r.relname as string);

/** The COPY data of each table in an archive (zstd of pg_dump's custom format), hashed, by table name. */
function archivedData(file: string): Record<string, { rows: number; sha256: string }> {
  const script = execFileSync('sh', ['-c', 'zstd -q -d -c "$1" | "$2" --file=-', 'sh', file, binPath('pg_restore')], {
    maxBuffer: 256 * 1024 * 1024,
  }).toString();
  const out: Record<string, { rows: number; sha256: string }> = {};
  let table: string | undefined;
  let hash = createHash('sha256');
  let rows = 0;
  for (const line of script.split('\n')) {
    const copy = /^COPY \w+\.(\w+) .* FROM stdin;$/.exec(line);
    if (copy) {
      table = copy[1];
      hash = createHash('sha256');
      rows = 0;
    } else if (table && line === '\\.') {
      out[table] = { rows, sha256: hash.digest('hex') };
      table = undefined;
    } else if (table) {
      hash.update(`${line}\n`);
      rows++;
    }
  }
  return out;
}

describe('governor: by hand', () => {
  it("throttle holds drop-expired-partitions between partitions, in pg_dump; its result: a calm run's", async () => {
    // The run left alone, for comparison.
    const calm = await rt.queues.enqueue('drop-expired-partitions', { tables: ['calm.days'], now: NOW });
    const calmDone = await waitForFinished(rt.queues.get('drop-expired-partitions'), calm.job.id!, 120_000);
    expect(calmDone.state, calmDone.job.failedReason).toBe('completed');
    const calmPolicy = (calmDone.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    expect(calmPolicy.dropped).toEqual(['calm.days_p20260101', 'calm.days_p20260102', 'calm.days_p20260103']);

    // The first detach waits on this lock: the run is then inside its first partition.
    const lock = new pg.Client({ connectionString: h.dbUrl });
    await lock.connect();
    await lock.query('begin; lock table ret.days_p20260101 in share mode');
    const { job } = await rt.queues.enqueue('drop-expired-partitions', { tables: ['ret.days'], now: NOW });
    const id = job.id!;
    await waitUntil(ourWait('%detach partition%days_p20260101%'), 30_000, 'the first detach to wait');
    const held = await throttle({ job: id, for: '10m', reason: 'by hand in a test' }).expect(200);
    expect(held.body.hold).toMatchObject({ what: `job drop-expired-partitions/${id}`, reason: 'by hand in a test' });
    // The run's governor reads the holds every 100 ms: a second for it to see this one.
    await sleep(1000);
    await lock.query('commit');

    // Between partitions: the first is detached, the second waits for `resume`.
    const between = await waitUntil(
      async () => (await governor()).held.find((r) => r.jobId === id && r.started),
      30_000,
      'the run to be paused before its second partition',
    );
    expect(between).toMatchObject({ state: 'paused', kind: 'paused', unit: 'detach ret.days_p20260102' });
    expect(between.reason).toMatch(/^by hand \(job drop-expired-partitions\/\d+\) until .*: by hand in a test$/);
    expect(await attached('ret')).toEqual(['days_p20260102', 'days_p20260103', 'days_p20260104', 'days_p20260105']);
    expect(await logsOf('drop-expired-partitions', id)).toMatch(
      new RegExp(
        String.raw`paused: by hand \(job drop-expired-partitions/\d+\) until [^)]*: by hand in a test ` +
          String.raw`\(before detach ret\.days_p20260102\)`,
      ),
    );
    expect(await rt.queues.get('drop-expired-partitions').getJobState(id)).toBe('active');

    // Inside the dump: the archive first counts the detached partitions' rows; this lock holds it there.
    await lock.query('begin; lock table ret.days_p20260101 in access exclusive mode');
    const resumed = await resume({ job: `drop-expired-partitions/${id}` }).expect(200);
    expect(resumed.body.ended.what).toBe(`job drop-expired-partitions/${id}`);
    await waitUntil(ourWait('%count(*)%days_p20260101%'), 60_000, "the archive's count to wait");
    expect(await attached('ret')).toEqual(['days_p20260104', 'days_p20260105']);
    await throttle({ job: id, for: '10m' }).expect(200);
    await sleep(1000);
    await lock.query('commit');
    await lock.end();
    // pg_dump's bytes are not read: its pipe fills, then the socket, and the server's COPY waits.
    const copying = await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select wait_event from pg_stat_activity where query ilike 'COPY %days_p20260101%' and ` +
              `wait_event = 'ClientWrite'`,
          )
        ).rows[0],
      60_000,
      "the server's COPY to wait in ClientWrite",
    );
    expect(copying.wait_event).toBe('ClientWrite');
    const inDump = (await governor()).held.find((r) => r.jobId === id);
    expect(inDump).toMatchObject({ state: 'paused', unit: 'pg_dump of ret.days' });
    // Held, not merely slow: the archive being written does not grow, and the COPY is still there.
    const dir = path.join(h.backupDir, 'partitions', 'main');
    const partial = () => {
      const f = fs.readdirSync(dir).find((x) => x.startsWith('ret.days-') && x.endsWith('.partial'));
      return f === undefined ? -1 : fs.statSync(path.join(dir, f)).size;
    };
    const before = partial();
    await sleep(1500);
    expect(partial()).toBe(before);
    expect(
      (await h.admin.query(`select 1 from pg_stat_activity where query ilike 'COPY %days_p20260101%'`)).rowCount,
    ).toBe(1);
    // Nothing is dropped while the archive is not whole.
    const journal = await h.admin.query(
      `select partition_name, state from pgmaint.retention_journal where parent = 'ret.days' order by 1`,
    );
    expect(journal.rows.map((r) => r.state)).toEqual(['detached', 'detached', 'detached']);

    await resume({ job: id }).expect(200);
    const done = await waitForFinished(rt.queues.get('drop-expired-partitions'), id, 120_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    const policy = (done.job.returnvalue as DropExpiredPartitionsResult).policies[0]!;
    // The same work as the run left alone: the same partitions dropped, the same rows archived.
    const asRet = (s: string) => s.replace(/^calm\./, 'ret.');
    expect(policy.dropped).toEqual(calmPolicy.dropped.map(asRet));
    expect(policy.skipped).toEqual(calmPolicy.skipped);
    expect(policy.archives.map((a) => [a.partition, a.rows])).toEqual(
      calmPolicy.archives.map((a) => [asRet(a.partition), a.rows]),
    );
    expect(archivedData(policy.archives[0]!.file)).toEqual(archivedData(calmPolicy.archives[0]!.file));
    expect(await attached('ret')).toEqual(await attached('calm'));
    const open = await h.admin.query(
      `select count(*)::int as n from pgmaint.retention_journal where state in ('detaching', 'detached', 'archived')`,
    );
    expect(open.rows[0].n).toBe(0);
    expect(await logsOf('drop-expired-partitions', id)).toMatch(/running again after \d+ s held \(paused: by hand/);
    expect((await governor()).held).toEqual([]);
  });

  it('a maintenance pause holds a scheduled run, not missed nor dropped, until it expires on its own', async () => {
    const cli = h.spawnPgmaint(['throttle', '--all', '--for', '20s', '--reason', 'during the sale'], {
      LOG_LEVEL: 'warn',
    });
    expect(await cli.exited, cli.output()).toBe(0);
    expect(cli.output()).toMatch(/^held every governed job until \d{4}-\d\d-\d\dT[\d:.]+Z$/m);
    const queue = rt.queues.get('vacuum-analyze');
    const run = await queue.add(
      'vacuum-analyze',
      { payload: { target: 'main', ...schedule.payload }, trigger: `schedule:${schedule.id}`, scheduleId: schedule.id },
      { prevMillis: Date.now() },
    );
    const waiting = await waitUntil(
      async () => (await governor()).held.find((r) => r.jobId === run.id),
      30_000,
      'the scheduled run to wait for the pause',
    );
    expect(waiting).toMatchObject({ state: 'paused', started: false, unit: '(not started)' });
    expect(waiting.reason).toMatch(/^paused by hand \(every governed job\) until .*: during the sale$/);
    expect(await queue.getJobState(run.id!)).toBe('delayed');
    expect(await logsOf('vacuum-analyze', run.id!)).toMatch(/waiting to start: paused by hand \(every governed job\)/);
    const history = () =>
      h.admin.query('select outcome, result from pgmaint.run_history where job_id = $1 and job = $2', [
        run.id,
        'vacuum-analyze',
      ]);
    expect((await history()).rows).toEqual([]);

    // Nobody resumes it: the pause ends at its expiry, and the run starts then (later than the tolerance).
    const done = await waitForFinished(queue, run.id!, 90_000);
    expect(done.state, done.job.failedReason).toBe('completed');
    expect(done.job.returnvalue).not.toHaveProperty('skipped');
    expect((await history()).rows).toEqual([{ outcome: 'succeeded', result: expect.any(Object) }]);
    expect(await new Controls(rt.queues.connection, rt.config.redis.prefix).list()).toEqual([]);
    expect((await governor()).held).toEqual([]);
  });
});

describe('governor: refusals', () => {
  const base = { DATABASE_URL: 'postgres://app@db:5432/dairy', BACKUP_DIR: '/var/backups/pgmaint' };
  const configError = (content: object) => {
    const file = `${h.dir}/bad-governor.json`;
    execFileSync('sh', ['-c', 'cat > "$1"', 'sh', file], { input: JSON.stringify(content) });
    try {
      loadConfig({ ...base, PGMAINT_CONFIG: file });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error('expected a ConfigError');
  };

  it('bad governor settings in the config are refused at start, naming the key', async () => {
    expect(configError({ governor: { maxActive: 'lots' } })).toMatch(/governor\.maxActive: .*number/i);
    expect(configError({ governor: { checkEveryMs: 10 } })).toMatch(/governor\.checkEveryMs: .*50/);
    expect(configError({ governor: { maxPauseSeconds: 0 } })).toMatch(/governor\.maxPauseSeconds: .*1/);
    expect(configError({ governor: { maxActiv: 3 } })).toMatch(/governor.*maxActiv/);
    expect(
      configError({
        targets: { reporting: { url: base.DATABASE_URL, governor: { maxActive: 9, criticalActive: 4 } } },
      }),
    ).toMatch(/targets\.reporting\.governor\.criticalActive: must be at least maxActive \(9\)/);
    expect(configError({ governor: { customMax: 5 } })).toMatch(/governor\.customMax: needs customSql/);
    // A worker given such a file does not start: exit 2, the key named.
    const file = `${h.dir}/bad-governor.json`;
    execFileSync('sh', ['-c', 'cat > "$1"', 'sh', file], {
      input: JSON.stringify({ governor: { maxReplicaLagSeconds: -1 } }),
    });
    const worker = h.spawnPgmaint(['worker', '--queues', 'vacuum-analyze'], {
      PGMAINT_CONFIG: file,
      LOG_LEVEL: 'warn',
    });
    expect(await worker.exited).toBe(2);
    expect(worker.output()).toMatch(/governor\.maxReplicaLagSeconds/);
  });

  it("a payload's governor field and throttle/resume requests are refused with 400 naming the field", async () => {
    const bad = async (job: string, payload: object) =>
      (await request(app).post(`/api/jobs/${job}`).set(admin).send(payload).expect(400)).body.issues as unknown[];
    expect(await bad('vacuum-analyze', { governor: { maxActive: 'lots' } })).toEqual([
      { path: 'governor.maxActive', message: expect.stringMatching(/number/i) },
    ]);
    expect(await bad('repack-table', { tables: ['load.a'], governor: { checkEveryMs: 5 } })).toEqual([
      { path: 'governor.checkEveryMs', message: expect.stringMatching(/50/) },
    ]);
    // A statement to run comes from the config file only.
    expect(await bad('drop-expired-partitions', { governor: { customSql: 'select 1' } })).toEqual([
      expect.objectContaining({ path: expect.stringMatching(/^governor(\.customSql)?$/) }),
    ]);
    expect(JSON.stringify(await bad('drop-expired-partitions', { governor: { customSql: 'select 1' } }))).toMatch(
      /customSql/,
    );

    const refused = async (route: string, body: unknown) =>
      (
        await request(app)
          .post(`/api/governor/${route}`)
          .set(admin)
          .send(body as object)
          .expect(400)
      ).body;
    expect((await refused('throttle', { all: true, for: '8d' })).issues).toEqual([
      { path: 'for', message: expect.stringMatching(/from 1s to 7d/) },
    ]);
    expect((await refused('throttle', { all: true, for: 'soon' })).issues[0].path).toBe('for');
    expect((await refused('throttle', {})).issues[0]).toEqual({
      path: '(body)',
      message: expect.stringMatching(/exactly one of job/),
    });
    expect((await refused('throttle', { all: true, queue: 'vacuum-analyze' })).issues[0].path).toBe('queue, all');
    expect((await refused('throttle', { queue: 'noop' })).issues[0]).toEqual({
      path: 'queue',
      message: expect.stringMatching(/^noop is not governed/),
    });
    expect((await refused('throttle', { job: 'x;y' })).issues[0].path).toBe('job');
    expect((await refused('throttle', { all: true, until: '1h' })).issues[0]).toEqual({
      path: 'until',
      message: expect.stringMatching(/^unknown field/),
    });
    expect((await refused('resume', { all: true, for: '1h' })).issues[0].path).toBe('for');
    const none = await request(app).post('/api/governor/resume').set(admin).send({ all: true }).expect(404);
    expect(none.body.issues[0]).toEqual({ path: 'all', message: expect.stringMatching(/^nothing to resume/) });
    const gone = await request(app).post('/api/governor/throttle').set(admin).send({ job: '999999' }).expect(404);
    expect(gone.body.issues[0].path).toBe('job');
    // Admin only, and a cookie's write from another origin is refused as every write is.
    await request(app).post('/api/governor/throttle').set(viewer).send({ all: true }).expect(403);
    await request(app).post('/api/governor/throttle').send({ all: true }).expect(401);
    const login = await request(app).post('/login').type('form').send({ token: ADMIN_TOKEN }).expect(303);
    const cookie = login.headers['set-cookie']![0]!.split(';')[0]!;
    await request(app)
      .post('/api/governor/throttle')
      .set('Host', '127.0.0.1:3000')
      .set('Cookie', cookie)
      .set('Origin', 'http://evil.example')
      .send({ all: true })
      .expect(403);
    expect(await new Controls(rt.queues.connection, rt.config.redis.prefix).list()).toEqual([]);
  });
});
