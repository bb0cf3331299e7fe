// /metrics and the alert monitor against real PostgreSQL and Redis, with alerts
// posted to a local HTTP receiver.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { AlertMonitor, judge, webhookNotifier, type WebhookBody } from '../../src/monitoring/alerts.ts';
import { HealthReader, type HealthSnapshot } from '../../src/monitoring/health.ts';
import { startServer } from '../../src/http/server.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import type { WorkerRuntime } from '../../src/runner/worker.ts';
import { ADMIN_TOKEN, createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';
import { sqlProbe } from '../support/test-jobs.ts';

const METRICS_TOKEN = 'metrics-token-for-tests-0123456';
let h: Harness;
let rt: Runtime;
let base: string;
let receiver: http.Server;
let received: WebhookBody[] = [];
let receiverFails = false;
let webhookUrl: string;

beforeAll(async () => {
  h = await createHarness('monitoring');
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (receiverFails) {
        res.writeHead(500).end();
        return;
      }
      received.push(JSON.parse(body));
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  webhookUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;

  await h.admin.query(`
    create table probe_lock (id int);
    create schema iot;
    create table iot.reading (read_at timestamptz not null, v int) partition by range (read_at);
    create table iot.reading_now partition of iot.reading for values from (now() - interval '1 day') to (now() +
      interval '1 day');
    create table iot.reading_default partition of iot.reading default;
    insert into iot.reading values (now() + interval '5 days', 1), (now() + interval '6 days', 2);`);
  const quietMinute = (new Date().getUTCMinutes() + 30) % 60;
  h.configFile({ partitions: [{ table: 'iot.reading', column: 'read_at', interval: 'day', premake: 7 }] });
  rt = h.runtime({
    env: { METRICS_TOKEN, ALERT_WEBHOOK_URL: webhookUrl },
    jobs: [...jobs, sqlProbe],
    schedules: [
      // Hourly at half an hour from now: it never fires while the tests count runs.
      { id: 'probe-hourly', job: 'sql-probe', cron: `${quietMinute} * * * *`, tz: 'UTC', payload: { scenario: 'ok' } },
    ],
  });
  const { port, monitor } = await startServer(rt, { port: 0, host: '127.0.0.1', sampleIntervalMs: 0 });
  monitor.stop(); // the tests drive evaluations themselves, at chosen times
  base = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  await h.close();
  receiver.close();
});

async function run(scenario: string, trigger?: string) {
  const { job } = await rt.queues.enqueue('sql-probe', { scenario }, { trigger });
  return waitForFinished(rt.queues.get('sql-probe'), job.id!);
}

function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (m && m[1] === name && want.every((w) => m[2]!.split(',').includes(w))) return Number(m[3]);
  }
  return undefined;
}

const byKey = (key: string, status: string) => received.filter((b) => b.alert.key === key && b.status === status);

describe('GET /metrics', () => {
  let workers: WorkerRuntime;
  it('needs a token; the scrape token opens /metrics and nothing else', async () => {
    expect((await fetch(`${base}/metrics`)).status).toBe(401);
    const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/plain/);
    expect((await fetch(`${base}/api/history`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).status).toBe(
      401,
    );
  });

  it(
    'counts runs by outcome across processes, with durations, last success, failures in a row, queues, schedules ' +
      'and partition runway',
    async () => {
      workers = startWorkers(rt, ['sql-probe']);
      onTestFinished(() => workers.close(5000));
      expect((await run('ok')).state).toBe('completed');
      expect((await run('ok')).state).toBe('completed');
      expect((await run('missing-relation')).state).toBe('failed');
      await rt.history.flush();
      await new Promise((r) => setTimeout(r, 200)); // the counters are written after the job settles
      const text = await (
        await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
      ).text();
      const probe = { job: 'sql-probe', target: 'main' };
      expect(sample(text, 'pgmaint_job_runs_total', { ...probe, outcome: 'succeeded' })).toBe(2);
      expect(sample(text, 'pgmaint_job_runs_total', { ...probe, outcome: 'failed' })).toBe(1);
      expect(sample(text, 'pgmaint_job_duration_seconds_count', probe)).toBe(3);
      expect(sample(text, 'pgmaint_job_duration_seconds_bucket', { ...probe, le: '+Inf' })).toBe(3);
      expect(sample(text, 'pgmaint_job_consecutive_failures', probe)).toBe(1);
      const lastSuccess = sample(text, 'pgmaint_job_last_success_timestamp_seconds', probe)!;
      expect(Math.abs(lastSuccess - Date.now() / 1000)).toBeLessThan(60);
      expect(sample(text, 'pgmaint_queue_workers', { queue: 'sql-probe' })).toBeGreaterThanOrEqual(1);
      expect(sample(text, 'pgmaint_queue_jobs', { queue: 'sql-probe', state: 'failed' })).toBe(1);
      const next = sample(text, 'pgmaint_schedule_next_run_timestamp_seconds', {
        schedule: 'probe-hourly',
        job: 'sql-probe',
        target: 'main',
      })!;
      expect(next - Date.now() / 1000).toBeGreaterThan(-5);
      expect(next - Date.now() / 1000).toBeLessThanOrEqual(3600);
      const runway = sample(text, 'pgmaint_partition_runway_seconds', { target: 'main', table: 'iot.reading' })!;
      expect(runway).toBeGreaterThan(86_000);
      expect(runway).toBeLessThanOrEqual(86_400);
      expect(sample(text, 'pgmaint_partition_default_rows', { target: 'main', table: 'iot.reading' })).toBe(2);
    },
  );
});

describe('the Grafana dashboard and the compose monitoring profile', () => {
  it(
    'every metric a dashboard panel queries is one /metrics serves; Prometheus reads the token compose hands ' + 'it',
    async () => {
      const root = path.resolve(import.meta.dirname, '../..');
      const dashboard = JSON.parse(fs.readFileSync(path.join(root, 'docker/grafana/dashboards/pgmaint.json'), 'utf8'));
      const exprs: string[] = dashboard.panels.flatMap((p: { targets?: { expr: string }[] }) =>
        (p.targets ?? []).map((t) => t.expr),
      );
      const queried = new Set(
        exprs.flatMap((e) => e.match(/pgmaint_[a-z_]+/g) ?? []).map((n) => n.replace(/_(bucket|sum|count)$/, '')),
      );
      const text = await (
        await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })
      ).text();
      const served = new Set([...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]));
      expect(queried.size).toBeGreaterThan(15);
      expect([...queried].filter((n) => !served.has(n))).toEqual([]);
      const compose = YAML.parse(fs.readFileSync(path.join(root, 'docker-compose.yml'), 'utf8'));
      const prometheus = YAML.parse(fs.readFileSync(path.join(root, 'docker/prometheus.yml'), 'utf8'));
      expect(compose.services.prometheus.secrets).toEqual(['metrics_token']);
      expect(prometheus.scrape_configs[0].authorization.credentials_file).toBe('/run/secrets/metrics_token');
      expect(compose.services.server.environment.METRICS_TOKEN).toBeDefined();
    },
  );
});

describe('alerts', () => {
  it('fires each incident once, waits out no-worker, trips the dead-man switch, and resolves each once', async () => {
    received = [];
    const monitor = new AlertMonitor(rt, new HealthReader(rt), webhookNotifier(webhookUrl));
    const t0 = Date.now();
    // The last probe run failed (above); no worker serves the scheduled queue now.
    const first = (await monitor.evaluate(t0))!;
    expect(first.fired.sort()).toEqual([
      'default-rows:main:iot.reading',
      'job-failed:sql-probe:PG_42P01',
      'partition-runway:main:iot.reading',
    ]);
    expect(byKey('job-failed:sql-probe:PG_42P01', 'firing')[0]!.text).toMatch(
      /sql-probe on main failed after its last attempt with PG_42P01: .*no_such_table/,
    );
    expect((await monitor.evaluate(t0 + 60_000))!.fired).toEqual([]); // same incidents: nothing sent again
    const later = (await monitor.evaluate(t0 + 3 * 60_000))!; // no worker for over 2 min
    expect(later.fired).toEqual(['no-worker:sql-probe']);
    const deadman = (await monitor.evaluate(t0 + 95 * 60_000))!; // next run (≤ 1 h) + max run + 30 min grace passed
    expect(deadman.fired).toEqual(['deadman:sql-probe']);
    expect(byKey('deadman:sql-probe', 'firing')[0]!.text).toMatch(/has not succeeded since it was first seen/);

    // A worker comes back and the schedule's run succeeds: those three end.
    const workers = startWorkers(rt, ['sql-probe']);
    expect((await run('ok', 'schedule:probe-hourly')).state).toBe('completed');
    await rt.history.flush();
    const after = (await monitor.evaluate(Date.now()))!;
    expect(after.resolved.sort()).toEqual([
      'deadman:sql-probe',
      'job-failed:sql-probe:PG_42P01',
      'no-worker:sql-probe',
    ]);
    expect((await monitor.evaluate(Date.now()))!.resolved).toEqual([]);
    for (const key of ['deadman:sql-probe', 'job-failed:sql-probe:PG_42P01', 'no-worker:sql-probe']) {
      expect(byKey(key, 'firing')).toHaveLength(1);
      expect(byKey(key, 'resolved')).toHaveLength(1);
    }
    expect(byKey('partition-runway:main:iot.reading', 'resolved')).toHaveLength(0);
    expect((await monitor.open()).map((i) => i.key).sort()).toEqual([
      'default-rows:main:iot.reading',
      'partition-runway:main:iot.reading',
    ]);
    const res = await fetch(`${base}/api/alerts`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(((await res.json()) as { open: unknown[] }).open).toHaveLength(2);
    await workers.close(5000);
  });

  it('a receiver that fails gets the alert again on the next evaluation, then never twice', async () => {
    received = [];
    const monitor = new AlertMonitor(rt, new HealthReader(rt), webhookNotifier(webhookUrl));
    const workers = startWorkers(rt, ['sql-probe']);
    expect((await run('syntax')).state).toBe('failed');
    await rt.history.flush();
    receiverFails = true;
    expect((await monitor.evaluate())!.fired).toEqual([]);
    receiverFails = false;
    expect((await monitor.evaluate())!.fired).toEqual(['job-failed:sql-probe:PG_42601']);
    expect((await monitor.evaluate())!.fired).toEqual([]);
    expect(byKey('job-failed:sql-probe:PG_42601', 'firing')).toHaveLength(1);
    await workers.close(5000);
  });

  it('a job active far past its maximum run time is an overrun incident until it finishes', async () => {
    const saved = rt.config.alerts.disabled;
    rt.config.alerts.disabled = [
      'job-failed',
      'deadman',
      'no-worker',
      'backup-age',
      'archive-lag',
      'partition-runway',
      'default-rows',
      'health-read',
    ];
    onTestFinished(() => {
      rt.config.alerts.disabled = saved;
    });
    received = [];
    const monitor = new AlertMonitor(rt, new HealthReader(rt), webhookNotifier(webhookUrl));
    const workers = startWorkers(rt, ['noop']);
    onTestFinished(() => workers.close(5000));
    const { job } = await rt.queues.enqueue('noop', { sleepMs: 2000 });
    await waitUntil(
      async () => (await rt.queues.get('noop').getJobState(job.id!)) === 'active',
      10_000,
      'the job to start',
    );
    const maxRunMs = rt.registry.get('noop')!.run.timeoutMs;
    expect((await monitor.evaluate(Date.now() + maxRunMs))!.fired).toEqual([]); // within its grace
    const late = (await monitor.evaluate(Date.now() + maxRunMs + rt.config.alerts.overrunGraceMs + 60_000))!;
    expect(late.fired).toEqual([`overrun:noop:${job.id}`]);
    expect(byKey(`overrun:noop:${job.id}`, 'firing')[0]!.text).toMatch(
      /has been active for .* past its maximum run time of 60 min/,
    );
    await waitForFinished(rt.queues.get('noop'), job.id!);
    expect((await monitor.evaluate())!.resolved).toEqual([`overrun:noop:${job.id}`]);
  });

  it('judges overruns, stale backups and archive lag against the thresholds', () => {
    const now = Date.parse('2026-11-25T12:00:00Z');
    const s: HealthSnapshot = {
      at: now,
      runs: [],
      durations: [],
      jobs: [],
      schedules: [],
      errors: {},
      targets: [],
      partitions: [],
      indexes: [],
      indexLeftovers: [],
      queries: [],
      governor: { holds: [], held: [], deferred: [], throttled: [] },
      queues: [
        {
          queue: 'backup',
          counts: { waiting: 0, active: 2, delayed: 0, prioritized: 0, 'waiting-children': 0, failed: 0, completed: 0 },
          workers: 1,
          needsWorker: true,
          active: [
            { id: 'stuck', startedAt: now - 4 * 3600_000, maxRunMs: 3 * 3600_000 },
            { id: 'fine', startedAt: now - 3 * 3600_000 - 60_000, maxRunMs: 3 * 3600_000 },
          ],
        },
      ],
      backups: [
        {
          target: 'main',
          dumpsExpected: true,
          baseExpected: true,
          newestDumpAgeSeconds: 30 * 3600,
          newestBaseBackupAgeSeconds: 3600,
          recoveryWindowSeconds: 86_400,
          archive: { lagSeconds: 1200, lagSegments: 3, checkedAt: now, ok: true },
          drill: null,
        },
        {
          target: 'quiet',
          dumpsExpected: false,
          baseExpected: false,
          newestDumpAgeSeconds: null,
          newestBaseBackupAgeSeconds: null,
          recoveryWindowSeconds: null,
          archive: null,
          drill: null,
        },
      ],
    };
    const cfg = h.runtime({ jobs: [...jobs, sqlProbe], schedules: [] }).config.alerts;
    expect(
      judge(s, cfg)
        .map((a) => a.key)
        .sort(),
    ).toEqual(['archive-lag:main', 'backup-age:main:dump', 'overrun:backup:stuck']);
    expect(judge(s, { ...cfg, disabled: ['archive-lag'] }).map((a) => a.key)).not.toContain('archive-lag:main');
  });
});
