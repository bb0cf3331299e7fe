// A fleet of five targets (databases in the test cluster): the same failure on many
// targets is one alert and one webhook post, followed per target; failed runs keep their
// stable error code in the run history, the API, the CLI and Bull Board; and alerts are
// decided on that code, never on the message. Alerts go to a local HTTP receiver.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { BOARD_PATH } from '../../src/http/routes.ts';
import { startServer } from '../../src/http/server.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { AlertMonitor, webhookNotifier, type WebhookBody } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import type { WorkerRuntime } from '../../src/runner/worker.ts';
import { ADMIN_TOKEN, createHarness, type Harness, waitForFinished } from '../support/harness.ts';
import { failWith, sqlProbe } from '../support/test-jobs.ts';

const TARGETS = ['t1', 't2', 't3', 't4', 't5'];
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
let h: Harness;
let rt: Runtime;
let base: string;
let workers: WorkerRuntime;
let receiver: http.Server;
let received: WebhookBody[] = [];
let webhookUrl: string;

beforeAll(async () => {
  h = await createHarness('fleet-alerts');
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      received.push(JSON.parse(body));
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  webhookUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;
  const targets: Record<string, { url: string; schedules: 'none' }> = {};
  for (const t of TARGETS) {
    await h.admin.query(`create database "t_${h.id}_${t}"`);
    const url = new URL(h.dbUrl);
    url.pathname = `/t_${h.id}_${t}`;
    targets[t] = { url: url.toString(), schedules: 'none' };
  }
  h.configFile({ targets });
  rt = h.runtime({ env: { ALERT_WEBHOOK_URL: webhookUrl }, jobs: [...jobs, sqlProbe, failWith], schedules: [] });
  const { port, monitor } = await startServer(rt, { port: 0, host: '127.0.0.1', sampleIntervalMs: 0 });
  monitor.stop(); // the tests drive evaluations themselves
  base = `http://127.0.0.1:${port}`;
  workers = startWorkers(rt, ['sql-probe', 'fail-with']);
});
afterAll(async () => {
  await workers.close(5000);
  await h.close();
  receiver.close();
});

/** Runs sql-probe's scenario on each target, waits for every run, and flushes their history rows. */
async function probe(scenario: 'missing-relation' | 'syntax' | 'ok', targets: string[]) {
  const states = await Promise.all(
    targets.map(async (target) => {
      const { job } = await rt.queues.enqueue('sql-probe', { scenario, target });
      return (await waitForFinished(rt.queues.get('sql-probe'), job.id!)).state;
    }),
  );
  expect(states).toEqual(targets.map(() => (scenario === 'ok' ? 'completed' : 'failed')));
  await rt.history.flush();
}

const monitor = () => new AlertMonitor(rt, new HealthReader(rt), webhookNotifier(webhookUrl));

describe('grouped alerts', () => {
  it(
    'one code on five targets is one alert and one post; a recovery drops out quietly, a newcomer is posted, a ' +
      'second code is a second alert, and each resolves once',
    async () => {
      const m = monitor();
      const missing = 'job-failed:sql-probe:PG_42P01';
      const syntax = 'job-failed:sql-probe:PG_42601';
      await probe('missing-relation', TARGETS);
      received = [];
      expect(await m.evaluate()).toMatchObject({ fired: [missing], updated: [], resolved: [] });
      expect(received).toHaveLength(1);
      expect(received[0]).toMatchObject({
        status: 'firing',
        alert: { key: missing, rule: 'job-failed', labels: { job: 'sql-probe', code: 'PG_42P01' }, targets: TARGETS },
      });
      expect(received[0]!.text).toMatch(/sql-probe failed with PG_42P01 on 5 targets \(t1, t2, t3, t4, t5\)/);

      // t3 succeeds again: it leaves the group, which still holds for the other four; nothing is posted.
      await probe('ok', ['t3']);
      expect(await m.evaluate()).toMatchObject({ fired: [], updated: [missing], resolved: [] });
      expect(received).toHaveLength(1);
      const open = await (await fetch(`${base}/api/alerts`, { headers: admin })).json();
      expect(open.open).toEqual([expect.objectContaining({ key: missing, targets: ['t1', 't2', 't4', 't5'] })]);

      // t3 fails the same way again: it joins, and that is posted, naming it.
      await probe('missing-relation', ['t3']);
      expect(await m.evaluate()).toMatchObject({ fired: [], updated: [missing], resolved: [] });
      expect(received).toHaveLength(2);
      expect(received[1]).toMatchObject({ status: 'firing', added: ['t3'], alert: { key: missing, targets: TARGETS } });

      // Another code on t1 and t2: a second alert; they leave the first one.
      await probe('syntax', ['t1', 't2']);
      expect(await m.evaluate()).toMatchObject({ fired: [syntax], updated: [missing], resolved: [] });
      expect(received).toHaveLength(3);
      expect(received[2]!.alert).toMatchObject({ key: syntax, targets: ['t1', 't2'] });
      expect((await m.open()).find((i) => i.key === missing)!.targets).toEqual(['t3', 't4', 't5']);

      // Every target recovers: each alert resolves, one post each.
      await probe('ok', TARGETS);
      const end = (await m.evaluate())!;
      expect(end.resolved.sort()).toEqual([syntax, missing]);
      expect(
        received
          .slice(3)
          .map((b) => [b.status, b.alert.key])
          .sort(),
      ).toEqual([
        ['resolved', syntax],
        ['resolved', missing],
      ]);
      expect(await m.evaluate()).toMatchObject({ fired: [], updated: [], resolved: [] });
      expect(received).toHaveLength(5);
    },
  );
});

describe('error codes all the way through', () => {
  it(
    'a failure keeps its code in run_history, /api/history, pgmaint history and Bull Board; the corruption ' +
      'alert fires on the code whatever the message says',
    async () => {
      const message = 'checksum mismatch in farm.milking block 3';
      const { job } = await rt.queues.enqueue('fail-with', { target: 't2', code: 'CORRUPTION', message });
      const done = await waitForFinished(rt.queues.get('fail-with'), job.id!);
      expect(done.state).toBe('failed');
      expect(done.job.failedReason).toBe(`CORRUPTION: ${message}`);
      const board = await fetch(`${base}${BOARD_PATH}/api/queues/fail-with/${job.id}`, { headers: admin });
      expect(((await board.json()) as { job: { failedReason: string } }).job.failedReason).toBe(
        `CORRUPTION: ${message}`,
      );
      // A PostgreSQL error's code is its SQLSTATE.
      await probe('missing-relation', ['t4']);

      const { rows } = await h.admin.query(
        `select job, target, outcome, error, error_code from pgmaint.run_history
          where (queue = 'fail-with' and job_id = $1) or (job = 'sql-probe' and target = 't4')
          order by id desc limit 2`,
        [job.id],
      );
      expect(rows).toEqual([
        expect.objectContaining({ job: 'sql-probe', outcome: 'failed', error_code: 'PG_42P01' }),
        { job: 'fail-with', target: 't2', outcome: 'failed', error: message, error_code: 'CORRUPTION' },
      ]);

      const api = (await (await fetch(`${base}/api/history?job=fail-with`, { headers: admin })).json()) as {
        runs: { job_id: string; error_code: string | null }[];
      };
      expect(api.runs.find((r) => r.job_id === job.id)).toMatchObject({ error_code: 'CORRUPTION' });
      const cli = h.spawnPgmaint(['history', '--json', '--limit', '50'], { LOG_LEVEL: 'warn' });
      expect(await cli.exited).toBe(0);
      const out = cli.output();
      const printed = JSON.parse(out.slice(out.search(/^\{/m))) as typeof api;
      expect(printed.runs.find((r) => r.job_id === job.id)).toMatchObject({ error_code: 'CORRUPTION' });
      const table = h.spawnPgmaint(['history', '--limit', '50'], { LOG_LEVEL: 'warn' });
      expect(await table.exited).toBe(0);
      expect(table.output()).toMatch(/\s+CODE\s+ERROR$/m);
      expect(table.output()).toMatch(/ fail-with\s+t2\s+ad-hoc\s+failed\s+\S+\s+CORRUPTION\s+checksum mismatch/);

      received = [];
      const fired = (await monitor().evaluate())!.fired.sort();
      expect(fired).toEqual(['corruption:t2', 'job-failed:fail-with:CORRUPTION', 'job-failed:sql-probe:PG_42P01']);
      expect(received.find((b) => b.alert.key === 'corruption:t2')).toMatchObject({
        text: expect.stringContaining(`data corruption on t2: ${message}`),
        alert: { rule: 'corruption', severity: 'critical', targets: ['t2'] },
      });
      // Any other code is no corruption, whatever its message says.
      const other = await rt.queues.enqueue('fail-with', {
        target: 't5',
        code: 'POLICY',
        message: 'corruption found in 1 relation(s): (a message, not a finding)',
      });
      expect((await waitForFinished(rt.queues.get('fail-with'), other.job.id!)).state).toBe('failed');
      await rt.history.flush();
      expect((await monitor().evaluate())!.fired).toEqual(['job-failed:fail-with:POLICY']);
    },
  );
});
