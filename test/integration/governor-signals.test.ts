// The load governor's signals on a real target (docs/governor.md), each seen holding a
// vacuum-analyze with its reason and letting it go on after: sessions waiting on a lock;
// the custom statement over its threshold (and, failing or giving no number, said in the
// run's log naming customSql); the latency probe against its quiet baseline, the target
// made slow by a proxy that delays its answers. And what a held run gives back: held by
// hand between relations, an integrity-check keeps no session and no heavy-job permit, so
// a second heavy job on the cluster runs meanwhile; resumed, the check completes.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { VacuumAnalyzeResult } from '../../jobs/vacuum-analyze.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { readGovernor } from '../../src/governor/board.ts';
import { Controls } from '../../src/governor/controls.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let controls: Controls;
let proxy: net.Server;
/** Milliseconds the proxy holds each chunk the server sends before passing it on. */
let delayMs = 0;
const sessions: pg.Client[] = [];

/** A TCP proxy in front of the test's PostgreSQL that delays the server's answers by `delayMs`. */
async function startDelayProxy(host: string, port: number): Promise<number> {
  proxy = net.createServer((client) => {
    const server = net.connect({ host, port });
    client.on('error', () => server.destroy());
    server.on('error', () => client.destroy());
    client.on('close', () => server.destroy());
    server.on('close', () => client.destroy());
    client.pipe(server);
    // Every chunk waits as long as the delay in force when it came: answers keep their order.
    server.on('data', (chunk: Buffer) => {
      if (delayMs) setTimeout(() => client.writable && client.write(chunk), delayMs);
      else client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return (proxy.address() as net.AddressInfo).port;
}

beforeAll(async () => {
  h = await createHarness('gov_signals');
  await h.admin.query(`
    create extension if not exists amcheck;
    create schema load;
    create table load.a (id int primary key, v text);
    create table load.b (id int primary key, v text);
    create schema chk;
    create table chk.t1 (id int primary key, v text);
    create table chk.t2 (id int primary key, v text);
    create table chk.t3 (id int primary key, v text);
    insert into chk.t1 select g, md5(g::text) from generate_series(1, 1000) g;
    insert into chk.t2 select g, md5(g::text) from generate_series(1, 1000) g;
    insert into chk.t3 select g, md5(g::text) from generate_series(1, 1000) g;
    create schema app;
    create table app.t (id int);
    create schema gov;
    create table gov.knob (v numeric);
    insert into gov.knob values (0);`);
  const db = new URL(h.dbUrl);
  const port = await startDelayProxy(db.hostname, Number(db.port || 5432));
  db.hostname = '127.0.0.1';
  db.port = String(port);
  h.configFile({
    governor: {
      checkEveryMs: 100,
      maxActive: null,
      maxLockWaits: 1,
      maxReplicaLagSeconds: null,
      customSql: 'select v from gov.knob',
      customMax: 10,
    },
    history: { synchronous: true },
    // An idle session of the pool lives long here: one closed sooner was closed by the hold.
    connections: { idleTimeoutMs: 120_000 },
    jobs: { 'vacuum-analyze': { attempts: 1 }, 'integrity-check': { attempts: 1 } },
  });
  // Every session of pgmaint's on the target goes through the proxy; the test's own (h.admin) do not.
  rt = h.runtime({ schedules: [], env: { DATABASE_URL: db.toString() } });
  await rt.history.migrate();
  controls = new Controls(rt.queues.connection, rt.config.redis.prefix);
  startWorkers(rt, ['vacuum-analyze', 'integrity-check']);
}, 120_000);
afterEach(async () => {
  delayMs = 0;
  await h.admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'app'`);
  for (const c of sessions.splice(0)) await c.end().catch(() => undefined);
  await h.admin.query(
    'drop table if exists gov.knob; create table gov.knob (v numeric); insert into gov.knob values (0)',
  );
  await controls.clear({ kind: 'all' });
});
afterAll(async () => {
  await h.close();
  proxy?.close();
});

async function appSession(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: h.dbUrl, application_name: 'app' });
  await c.connect();
  c.on('error', () => undefined);
  sessions.push(c);
  return c;
}

const governor = () => readGovernor(rt.queues.connection, rt.config.redis.prefix);
const logsOf = async (queue: string, id: string) => (await rt.queues.get(queue).getJobLogs(id)).logs.join('\n');
const vacuum = (governorKeys: object = {}) =>
  rt.queues.enqueue('vacuum-analyze', {
    schemas: ['load'],
    thresholds: { minModTuples: 0, modRatio: 0 },
    governor: governorKeys,
  });
const heldRun = (id: string, kind?: string) =>
  waitUntil(
    async () => (await governor()).held.find((r) => r.jobId === id && r.started && (!kind || r.kind === kind)),
    30_000,
    `the run to be held${kind ? ` (${kind})` : ''}`,
  );

async function completes(queue: string, id: string) {
  const done = await waitForFinished(rt.queues.get(queue), id, 60_000);
  expect(done.state, done.job.failedReason).toBe('completed');
  expect(done.job.returnvalue).not.toHaveProperty('deferred');
  return done.job.returnvalue as unknown;
}

describe('governor: signals', () => {
  it('sessions waiting on a lock hold a run; once the lock goes, it goes on', async () => {
    const holder = await appSession();
    await holder.query('begin; lock table app.t in access exclusive mode');
    for (let i = 0; i < 2; i++) (await appSession()).query('select count(*) from app.t').catch(() => undefined);
    const { job } = await vacuum();
    const held = await heldRun(job.id!);
    expect(held).toMatchObject({ state: 'throttled', kind: 'lock_waits', reason: 'sessions waiting on locks 2 > 1' });
    expect(await logsOf('vacuum-analyze', job.id!)).toMatch(
      /throttled: sessions waiting on locks 2 > 1 \(before ANALYZE load\.[ab]\)/,
    );
    await holder.query('commit');
    const r = (await completes('vacuum-analyze', job.id!)) as VacuumAnalyzeResult;
    expect('tables' in r && r.tables.map((t) => t.table).sort()).toEqual(['load.a', 'load.b']);
    expect(await logsOf('vacuum-analyze', job.id!)).toMatch(/running again after \d+ s held \(throttled: sessions/);
  });

  it('customSql over customMax holds a run, under it lets it go; no number is said, naming customSql', async () => {
    await h.admin.query('update gov.knob set v = 42');
    const { job } = await vacuum();
    const id = job.id!;
    expect(await heldRun(id)).toMatchObject({ state: 'throttled', kind: 'custom', reason: 'custom signal 42 > 10' });
    expect(await logsOf('vacuum-analyze', id)).toMatch(/throttled: custom signal 42 > 10 \(before ANALYZE load\./);
    // Held by hand too, so that what the statement gives next is seen while the run waits.
    await controls.set({ kind: 'job', queue: 'vacuum-analyze', id }, 600_000, 'test');
    await h.admin.query('update gov.knob set v = null');
    await waitUntil(
      async () => /customSql failed: it returned NULL, not a number/.test(await logsOf('vacuum-analyze', id)),
      30_000,
      'a NULL from customSql in the run log',
    );
    await h.admin.query('drop table gov.knob');
    await waitUntil(
      async () =>
        new RegExp(
          String.raw`governor: customSql failed: relation "gov\.knob" does not exist; ` +
            String.raw`the custom signal \(customMax, customCritical\) holds nothing`,
        ).test(await logsOf('vacuum-analyze', id)),
      30_000,
      "customSql's error in the run log",
    );
    await h.admin.query('create table gov.knob (v numeric); insert into gov.knob values (3)');
    await controls.clear({ kind: 'job', queue: 'vacuum-analyze', id });
    await completes('vacuum-analyze', id);
    expect(await logsOf('vacuum-analyze', id)).toMatch(/running again after \d+ s held/);
  });

  it('the probe, slow against its quiet baseline, holds a run; once the target is fast again, it goes on', async () => {
    // The quiet baseline first: probes taken while the run waits (here for the custom signal) and the target is fast.
    await h.admin.query('update gov.knob set v = 42');
    const { job } = await vacuum({ maxProbeRatio: 3, minProbeMs: 100 });
    const id = job.id!;
    await heldRun(id, 'custom');
    await sleep(3000);
    // The target slows down: every answer comes 300 ms late. The probe's reason comes before the custom one.
    delayMs = 300;
    const held = await heldRun(id, 'probe');
    expect(held.state).toBe('throttled');
    expect(held.reason).toMatch(/^probe \d+ ms > 3 × quiet [\d.]+ ms( and > minProbeMs 100)?$/);
    await h.admin.query('update gov.knob set v = 0');
    expect(await logsOf('vacuum-analyze', id)).toMatch(/throttled: probe \d+ ms > 3 × quiet [\d.]+ ms/);
    expect((await governor()).held.find((r) => r.jobId === id)?.kind).toBe('probe');
    delayMs = 0;
    await completes('vacuum-analyze', id);
    expect(await logsOf('vacuum-analyze', id)).toMatch(/running again after \d+ s held \(throttled: probe/);
  });
});

describe('governor: a held run gives back what it holds', () => {
  it('held between relations, integrity-check keeps no session nor its permit: another heavy job runs', async () => {
    // The run waits on this lock with a session of the pool's: the run has then started.
    const lock = await appSession();
    await lock.query('begin; lock table chk.t1 in access exclusive mode');
    const { job } = await rt.queues.enqueue('integrity-check', { schemas: ['chk'], full: true });
    const id = job.id!;
    const session = await waitUntil(
      async () =>
        (
          await h.admin.query<{ pid: number }>(
            `select pid from pg_stat_activity where application_name = 'pgmaint' and wait_event_type = 'Lock'`,
          )
        ).rows[0],
      30_000,
      'the first relation to wait',
    );
    await controls.set({ kind: 'job', queue: 'integrity-check', id }, 600_000, 'test');
    await sleep(1000);
    await lock.query('commit');
    // Before its next relation (the lock held it while it chose them, or in the first one).
    // Paused by hand (a signal or a permit may hold it for a moment on its way there).
    const held = await heldRun(id, 'paused');
    expect(held).toMatchObject({ state: 'paused', unit: expect.stringMatching(/^check chk\.t[123]$/) });
    // Its session is closed, not kept idle for the rest of the hold.
    await waitUntil(
      async () => (await h.admin.query('select 1 from pg_stat_activity where pid = $1', [session.pid])).rowCount === 0,
      10_000,
      "the held run's session to be closed",
    );
    // With one heavy job per cluster, a second one runs while the first is held.
    const other = await vacuum();
    await completes('vacuum-analyze', other.job.id!);
    expect(await rt.queues.get('integrity-check').getJobState(id)).toBe('active');

    await controls.clear({ kind: 'job', queue: 'integrity-check', id });
    const r = (await completes('integrity-check', id)) as { checked: string[]; findings: unknown[]; left: string[] };
    expect(r.checked.sort()).toEqual(['chk.t1', 'chk.t2', 'chk.t3']);
    expect(r.findings).toEqual([]);
    expect(r.left).toEqual([]);
  });
});
