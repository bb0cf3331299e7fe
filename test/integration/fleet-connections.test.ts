// A fleet on one deployment (issue 26, items 1 and 2), on the real PostgreSQL and
// Redis: one target that cannot be reached (a closed port, a role refused with `too
// many clients`) never blinds the readings of the others, and connections keep to the
// per-cluster budget: no idle session once the idle timeout has passed, never more
// sessions than the budget, `too many clients` waited out with backoff.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { loadConfig } from '../../src/core/config.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { closedPort } from '../support/ports.ts';
import { startServer } from '../../src/http/server.ts';
import type { AlertMonitor } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import type { StatusReport } from '../../src/monitoring/status.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

let h: Harness;
let mainDb: string;
const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** The URL of database `db` in the shared test cluster, as `user`. */
function dbUrl(db: string, user = 'postgres'): string {
  const u = new URL(inject('pgUrl'));
  u.username = user;
  u.pathname = `/${db}`;
  return u.toString();
}

const PARTITIONED = `
  create schema iot;
  create table iot.reading (read_at timestamptz not null, v int) partition by range (read_at);
  create table iot.reading_now partition of iot.reading for values from (now() - interval '1 day') to (now() +
    interval '1 day');
  create table iot.reading_default partition of iot.reading default;`;
const policy = (target: string) => ({ table: 'iot.reading', column: 'read_at', interval: 'day', premake: 3, target });

/** A database of its own in the shared cluster, with a partitioned table. */
async function targetDb(suffix: string): Promise<string> {
  const name = `${mainDb}_${suffix}`;
  await h.admin.query(`create database "${name}"`);
  const c = new pg.Client({ connectionString: dbUrl(name) });
  await c.connect();
  await c.query(PARTITIONED);
  await c.end();
  return name;
}

/** Counts pgmaint's sessions (any application_name pgmaint…) on these databases, as often as it can. */
function sessionSampler(databases: string[]) {
  const client = new pg.Client({ connectionString: dbUrl(mainDb) });
  let peak = 0;
  let running = true;
  const count = async () =>
    (
      await client.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity where datname = any($1) and application_name like 'pgmaint%'`,
        [databases],
      )
    ).rows[0]!.n;
  const started = client.connect().then(async () => {
    while (running) {
      peak = Math.max(peak, await count());
      await sleep(5);
    }
  });
  return {
    count,
    /** Stops sampling; the most sessions seen at once. */
    async stop(): Promise<number> {
      running = false;
      await started;
      return peak;
    },
    close: () => client.end(),
  };
}

beforeAll(async () => {
  h = await createHarness('fleetconn');
  mainDb = new URL(h.dbUrl).pathname.slice(1);
  await h.admin.query(PARTITIONED);
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

/** The server, in this process, with the evaluations driven by the tests. */
async function serverOf(rt: Runtime): Promise<{ base: string; monitor: AlertMonitor }> {
  // sampleIntervalMs 0: every answer reads the fleet afresh (and stores it for `pgmaint status`).
  const server = await startServer(rt, { port: 0, host: '127.0.0.1', sampleIntervalMs: 0 });
  server.monitor.stop();
  return { base: `http://127.0.0.1:${server.port}`, monitor: server.monitor };
}

interface OpenAlert {
  key: string;
  rule: string;
  summary: string;
  targets?: string[];
  labels: Record<string, string>;
}
const openAlerts = async (base: string) =>
  ((await (await fetch(`${base}/api/alerts`, { headers: auth })).json()) as { open: OpenAlert[] }).open;

describe('three targets, one of them down', () => {
  let rt: Runtime;
  let base: string;
  let monitor: AlertMonitor;
  let deadPort: number;

  beforeAll(async () => {
    const second = await targetDb('second');
    deadPort = await closedPort();
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        second: { url: dbUrl(second), schedules: 'none' },
        down: { url: `postgres://postgres@127.0.0.1:${deadPort}/gone`, schedules: 'none' },
      },
      partitions: [policy('main'), policy('second'), policy('down')],
    });
    rt = h.runtime({ jobs, schedules: [] });
    ({ base, monitor } = await serverOf(rt));
  });
  // Its sessions are gone before the next tests count theirs.
  afterAll(() => rt.close());

  it('status, metrics and alerts go on for the others; the down one is marked with its errors', async () => {
    const res = await fetch(`${base}/api/status`, { headers: auth });
    expect(res.status).toBe(200);
    const status = (await res.json()) as StatusReport;
    expect(status.targets.map((t) => [t.target, t.reachable])).toEqual([
      ['main', true],
      ['second', true],
      ['down', false],
    ]);
    expect(status.targets[2]!.error).toMatch(/^connect ECONNREFUSED 127\.0\.0\.1:\d+/);
    const runway = Object.fromEntries(status.partitions.map((p) => [p.target, p]));
    expect(runway.main!.runwaySeconds).toBeGreaterThan(0);
    expect(runway.second!.runwaySeconds).toBeGreaterThan(0);
    expect(runway.down).toMatchObject({
      runwaySeconds: null,
      error: expect.stringMatching(/^target down is unreachable: connect ECONNREFUSED/),
    });
    expect(status.errors).toEqual({});

    const metrics = await fetch(`${base}/metrics`, { headers: auth });
    expect(metrics.status).toBe(200);
    const text = await metrics.text();
    const port = new URL(inject('pgUrl')).port;
    expect(text).toContain(`pgmaint_target_up{target="main",cluster="127.0.0.1:${port}"} 1`);
    expect(text).toContain(`pgmaint_target_up{target="second",cluster="127.0.0.1:${port}"} 1`);
    expect(text).toContain(`pgmaint_target_up{target="down",cluster="127.0.0.1:${deadPort}"} 0`);
    expect(text).toMatch(/^pgmaint_partition_runway_seconds\{target="main",table="iot.reading"\} \d+$/m);
    expect(text).toMatch(/^pgmaint_partition_runway_seconds\{target="second",table="iot.reading"\} \d+$/m);
    // What was not read is the down target's table, and nothing else.
    expect(text.match(/^pgmaint_health_read_errors\{.*$/gm)).toEqual([
      'pgmaint_health_read_errors{part="partitions:down:iot.reading"} 1',
    ]);

    // The others' alerts fire as ever; the down target is one alert of its own, and its table none.
    const unreachableKey = `target-unreachable:127.0.0.1:${deadPort}:ECONNREFUSED`;
    const evaluation = (await monitor.evaluate())!;
    expect(evaluation.fired.sort()).toEqual([
      'partition-runway:main:iot.reading',
      'partition-runway:second:iot.reading',
      unreachableKey,
    ]);
    const down = (await openAlerts(base)).find((a) => a.rule === 'target-unreachable')!;
    expect(down).toMatchObject({
      key: unreachableKey,
      targets: ['down'],
      labels: { cluster: `127.0.0.1:${deadPort}`, code: 'ECONNREFUSED' },
    });
    expect(down.summary).toMatch(
      new RegExp(`^target down cannot be reached \\(cluster 127\\.0\\.0\\.1:${deadPort}\\): connect ECONNREFUSED`),
    );

    // `pgmaint status --json`, a process of its own, reads the same.
    const cli = h.spawnPgmaint(['status', '--json'], { LOG_LEVEL: 'warn' });
    expect(await cli.exited).toBe(0);
    const out = cli.output();
    const report = JSON.parse(out.slice(out.search(/^\{/m))) as StatusReport;
    expect(report.targets.map((t) => [t.target, t.reachable])).toEqual([
      ['main', true],
      ['second', true],
      ['down', false],
    ]);
    expect(report.partitions.filter((p) => p.runwaySeconds !== null).map((p) => p.target)).toEqual(['main', 'second']);
    expect(report.alerts.filter((a) => a.rule === 'target-unreachable')).toEqual([
      expect.objectContaining({ targets: ['down'] }),
    ]);
    expect(report.errors).toEqual({});
    const table = h.spawnPgmaint(['status'], { LOG_LEVEL: 'warn' });
    expect(await table.exited).toBe(0);
    expect(table.output()).toMatch(
      /^Unreachable targets\nTARGET\s+ERROR\ndown\s+connect ECONNREFUSED 127\.0\.0\.1:\d+\n/m,
    );
    expect(table.output()).toMatch(/^main\s+none\s+none\s+never\s+-\s+-$/m);
  });
});

describe('a full server, and a dead server with two databases', () => {
  let rt: Runtime;
  let base: string;
  let monitor: AlertMonitor;
  let capped: string;
  let deadPort: number;
  const fullKey = () => `target-unreachable:127.0.0.1:${new URL(inject('pgUrl')).port}:PG_53300`;

  beforeAll(async () => {
    deadPort = await closedPort();
    // A role PostgreSQL refuses with SQLSTATE 53300 (too many connections), like a full server.
    capped = `capped_${h.id}`.slice(0, 60);
    await h.admin.query(`create role "${capped}" login connection limit 0`);
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        down: { url: `postgres://postgres@127.0.0.1:${deadPort}/gone`, schedules: 'none' },
        // Another database of the same dead server: not tried again in the same reading.
        down2: { url: `postgres://postgres@127.0.0.1:${deadPort}/gone2`, schedules: 'none' },
        capped: { url: dbUrl(mainDb, capped), schedules: 'none' },
      },
      partitions: [policy('main'), policy('down')],
      // One attempt: only the wait for a session can carry the run past `too many clients`.
      jobs: { 'index-report': { attempts: 1 } },
    });
    rt = h.runtime({ jobs, schedules: [] });
    ({ base, monitor } = await serverOf(rt));
  });
  afterAll(() => rt.close());

  it('`too many clients` (53300) is read and alerted on like a closed port: one alert per cluster, code', async () => {
    const res = await fetch(`${base}/api/status`, { headers: auth });
    expect(res.status).toBe(200);
    const status = (await res.json()) as StatusReport;
    const byTarget = Object.fromEntries(status.targets.map((t) => [t.target, t]));
    expect(byTarget.main).toMatchObject({ reachable: true });
    expect(byTarget.capped).toMatchObject({
      reachable: false,
      error: expect.stringMatching(/too many connections for role .*\(SQLSTATE 53300\)/),
    });
    expect(byTarget.down).toMatchObject({ reachable: false, error: expect.stringMatching(/ECONNREFUSED/) });
    expect(byTarget.down2).toMatchObject({
      reachable: false,
      error: expect.stringMatching(
        /^cluster 127\.0\.0\.1:\d+ did not answer \(as for target down\): connect ECONNREFUSED/,
      ),
    });
    expect(status.errors).toEqual({});
    const metrics = await fetch(`${base}/metrics`, { headers: auth });
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/^pgmaint_target_up\{target="capped",cluster="127\.0\.0\.1:\d+"\} 0$/m);

    const evaluation = (await monitor.evaluate())!;
    const deadKey = `target-unreachable:127.0.0.1:${deadPort}:ECONNREFUSED`;
    expect(evaluation.fired.filter((k) => k.startsWith('target-unreachable:')).sort()).toEqual(
      [deadKey, fullKey()].sort(),
    );
    const open = (await openAlerts(base)).filter((a) => a.rule === 'target-unreachable');
    expect(open.map((a) => [a.key, a.targets]).sort()).toEqual(
      [
        [deadKey, ['down', 'down2']],
        [fullKey(), ['capped']],
      ].sort(),
    );
    expect(open.find((a) => a.key === fullKey())!.summary).toMatch(
      /^target capped cannot be reached \(cluster 127\.0\.0\.1:\d+\): too many connections for role .*SQLSTATE 53300/,
    );
    expect(open.find((a) => a.key === deadKey)!.summary).toMatch(
      /^2 targets on cluster 127\.0\.0\.1:\d+ cannot be reached with ECONNREFUSED \(down, down2\)/,
    );
    // Nothing more about them: no unreadable-part alert for the down target's table.
    expect((await monitor.evaluate())!.fired).toEqual([]);
    expect((await openAlerts(base)).filter((a) => a.rule === 'health-read')).toEqual([]);
  });

  it('a run that meets `too many clients` waits with backoff and succeeds once a session is free', async () => {
    const workers = startWorkers(rt, ['index-report']);
    const queue = rt.queues.get('index-report');
    const { job } = await rt.queues.enqueue('index-report', { target: 'capped' });
    const waiting = await waitUntil(
      async () => {
        const { logs } = await queue.getJobLogs(job.id!);
        return logs.some((l) => /SQLSTATE 53300/.test(l)) && logs;
      },
      20_000,
      'the run to log its wait for a session',
    );
    expect(waiting[0]).toMatch(
      /too many connections for role .* \(SQLSTATE 53300\): waiting for a session, connecting again in 0\.25 s$/,
    );
    await h.admin.query(`alter role "${capped}" connection limit -1`);
    const { state } = await waitForFinished(queue, job.id!, 60_000);
    expect(state).toBe('completed');
    await rt.history.flush();
    const { rows } = await h.admin.query(
      `select outcome from pgmaint.run_history where queue = 'index-report' and job_id = $1 order by id`,
      [job.id],
    );
    expect(rows.map((r) => r.outcome)).toEqual(['succeeded']);
    await workers.close(5000);
    // The server answers again: its alert resolves, the dead server's stays.
    const evaluation = (await monitor.evaluate())!;
    expect(evaluation.resolved).toContain(fullKey());
    expect(evaluation.open).toContain(`target-unreachable:127.0.0.1:${deadPort}:ECONNREFUSED`);
  });
});

describe('connections by budget', () => {
  const names = ['main', ...[1, 2, 3, 4, 5, 6, 7].map((i) => `b${i}`)];
  let dbs: string[];
  /** Eight targets: databases of the one test cluster, each with a partitioned table. */
  const eightTargets = async () => {
    dbs ??= [mainDb, ...(await Promise.all(names.slice(1).map((n) => targetDb(n))))];
    return Object.fromEntries(
      names.map((n, i) => [n, i === 0 ? { schedules: 'none' } : { url: dbUrl(dbs[i]!), schedules: 'none' }]),
    );
  };

  it('no idle session is held by the worker or the server once the idle timeout (default 10 s) passed', async () => {
    const dbs = [mainDb, await targetDb('idle1'), await targetDb('idle2')];
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        idle1: { url: dbUrl(dbs[1]!), schedules: 'none' },
        idle2: { url: dbUrl(dbs[2]!), schedules: 'none' },
      },
      partitions: [policy('main'), policy('idle1'), policy('idle2')],
    });
    const rt = h.runtime({ jobs, schedules: [] });
    const sampler = sessionSampler(dbs);
    try {
      const worker = h.spawnPgmaint(['worker', '--queues', 'create-partitions']);
      const server = h.spawnPgmaint(['server'], { HOST: '127.0.0.1', PORT: '0' });
      await worker.waitFor(/worker started/);
      await server.waitFor(/server listening/);
      const port = /"port":(\d+)[^\n]*server listening/.exec(server.output())![1];
      const runs = await Promise.all(
        ['main', 'idle1', 'idle2'].map((target) => rt.queues.enqueue('create-partitions', { target })),
      );
      for (const { job } of runs)
        expect((await waitForFinished(rt.queues.get('create-partitions'), job.id!)).state).toBe('completed');
      // The server reads every target for its health snapshot and /readyz.
      expect((await fetch(`http://127.0.0.1:${port}/api/status?fresh=1`, { headers: auth })).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
      expect(await sampler.stop()).toBeGreaterThan(0); // the sampler saw their sessions while they worked
      // Both processes still run, and hold nothing on any target.
      await waitUntil(async () => (await sampler.count()) === 0, 40_000, 'no pgmaint session left on the targets');
      expect([worker.child.exitCode, server.child.exitCode]).toEqual([null, null]);
    } finally {
      await sampler.stop();
      await sampler.close();
    }
  });

  it('a health reading ends its sessions on the targets when it is done, not an idle timeout later', async () => {
    const dbs = [mainDb, await targetDb('read1'), await targetDb('read2')];
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        read1: { url: dbUrl(dbs[1]!), schedules: 'none' },
        read2: { url: dbUrl(dbs[2]!), schedules: 'none' },
      },
      partitions: [policy('main'), policy('read1'), policy('read2')],
    });
    const rt = h.runtime({ jobs, schedules: [] });
    const sampler = sessionSampler(dbs);
    const readings = `select count(*)::int as n from pg_stat_activity
      where datname = any($1) and application_name = 'pgmaint/monitor'`;
    try {
      const snapshot = await new HealthReader(rt).take();
      expect(snapshot.targets.map((t) => [t.target, t.reachable])).toEqual([
        ['main', true],
        ['read1', true],
        ['read2', true],
      ]);
      expect(await sampler.stop()).toBeGreaterThan(0); // the reading had sessions while it read
      // At once, with the idle timeout (10 s) far off: the next reading is a sampler interval away.
      expect((await h.admin.query<{ n: number }>(readings, [dbs])).rows[0]!.n).toBe(0);
    } finally {
      await sampler.stop();
      await sampler.close();
      await rt.close();
    }
  });

  it('a worker running 16 jobs on 8 targets of one cluster never holds more than the default budget, 10', async () => {
    h.configFile({
      targets: await eightTargets(),
      partitions: names.map(policy),
      jobs: { 'create-partitions': { concurrency: 8 }, 'vacuum-analyze': { concurrency: 8 } },
    });
    const rt = h.runtime({ jobs, schedules: [] });
    const worker = h.spawnPgmaint(['worker', '--queues', 'create-partitions,vacuum-analyze']);
    await worker.waitFor(/worker started/);
    const sampler = sessionSampler(dbs);
    try {
      const runs = await Promise.all(
        names.flatMap((target) => [
          rt.queues.enqueue('create-partitions', { target }),
          rt.queues.enqueue('vacuum-analyze', { target }),
        ]),
      );
      // Hitting the budget queues the work: every run succeeds.
      const states = await Promise.all(
        runs.map(async ({ job }) => (await waitForFinished(rt.queues.get(job.name), job.id!, 90_000)).state),
      );
      expect(states).toEqual(runs.map(() => 'completed'));
      const peak = await sampler.stop();
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(10);
    } finally {
      await sampler.stop();
      await sampler.close();
    }
  });

  it('the server keeps to a configured budget of 3: health readings, /readyz and run history together', async () => {
    h.configFile({
      targets: await eightTargets(),
      partitions: names.map(policy),
      connections: { budget: 3 },
    });
    const server = h.spawnPgmaint(['server'], { HOST: '127.0.0.1', PORT: '0' });
    await server.waitFor(/server listening/);
    const port = /"port":(\d+)[^\n]*server listening/.exec(server.output())![1];
    const sampler = sessionSampler(dbs);
    try {
      const at = (route: string) => fetch(`http://127.0.0.1:${port}${route}`, { headers: auth });
      const answers = await Promise.all(
        [1, 2, 3, 4].flatMap(() => [at('/readyz'), at('/api/status?fresh=1'), at('/metrics'), at('/api/history')]),
      );
      // Waiting for a session is not failing: every request is answered in full.
      expect(answers.map((r) => r.status)).toEqual(answers.map(() => 200));
      const status = (await (await at('/api/status?fresh=1')).json()) as StatusReport;
      expect(status.targets.map((t) => [t.target, t.reachable])).toEqual(names.map((n) => [n, true]));
      const peak = await sampler.stop();
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(3);
    } finally {
      await sampler.stop();
      await sampler.close();
    }
  });
});

describe('the connections configuration', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-connections-'));
  const load = (file: object) => {
    const name = path.join(dir, 'c.json');
    fs.writeFileSync(name, JSON.stringify(file));
    return loadConfig({ DATABASE_URL: 'postgres://app@db1.internal/dairy', BACKUP_DIR: dir, PGMAINT_CONFIG: name });
  };
  const refusal = (file: object) => {
    try {
      load(file);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error('expected a ConfigError');
  };

  it("names each target's cluster by host:port unless it says its own, and gives each cluster its budget", () => {
    const c = load({
      targets: {
        reporting: { url: 'postgres://app@DB1.internal:5432/reporting' },
        archive: { url: 'postgres://app@10.0.0.9:6432/archive', cluster: 'archive-db' },
      },
      connections: { budget: 6, clusters: { 'archive-db': { budget: 3, readings: 1 } } },
    });
    expect([...c.targets.values()].map((t) => [t.name, t.cluster])).toEqual([
      ['main', 'db1.internal:5432'],
      ['reporting', 'db1.internal:5432'],
      ['archive', 'archive-db'],
    ]);
    expect(c.connections).toEqual({
      budget: 6,
      readings: 2,
      idleTimeoutMs: 10_000,
      clusters: { 'archive-db': { budget: 3, readings: 1 } },
    });
  });

  it('refuses what cannot work, naming the key and why', () => {
    expect(refusal({ connections: { budget: 1 } })).toMatch(
      /connections\.budget: must be at least 2 \(a run may hold two sessions at once\)/,
    );
    expect(refusal({ connections: { budjet: 5 } })).toMatch(/connections: Unrecognized key: "budjet"/);
    expect(refusal({ connections: { clusters: { 'db9:5432': { budget: 4 } } } })).toBe(
      "connections.clusters.db9:5432: no target is on this cluster (the targets' clusters: db1.internal:5432)",
    );
    expect(refusal({ connections: { budget: 4, readings: 5 } })).toBe(
      'connections.readings: 5 is more than the budget of cluster db1.internal:5432 (4): the readings share the budget',
    );
    expect(refusal({ connections: { clusters: { 'db1.internal:5432': { budget: 3, max: 1 } } } })).toMatch(
      /connections\.clusters\.db1\.internal:5432: Unrecognized key: "max"/,
    );
    expect(refusal({ targets: { x: { url: 'postgres://h/x', cluster: 'a b' } } })).toMatch(
      /targets\.x\.cluster: must be a cluster name/,
    );
  });
});
