// The CLI commands as a person runs them: real processes against the test
// PostgreSQL and Redis, asserting what they print and how they exit.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness } from '../support/harness.ts';

let h: Harness;

beforeAll(async () => {
  h = await createHarness('cli');
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

async function run(args: string[], env: Record<string, string> = {}) {
  const p = h.spawnPgmaint(args, { LOG_LEVEL: 'warn', ...env });
  const code = await p.exited;
  return { code, out: p.output() };
}

/** The JSON document a command printed on stdout (progress and logs go to stderr). */
function lastJson(out: string): unknown {
  const start = out.search(/^[[{]/m);
  return JSON.parse(out.slice(start));
}

describe('pgmaint CLI', () => {
  it('enqueue --wait prints progress lines, then the result, and exits 0', async () => {
    const worker = h.spawnPgmaint(['worker', '--queues', 'noop']);
    await worker.waitFor(/worker started/);
    const { code, out } = await run(['enqueue', 'noop', '--data', '{"sleepMs": 300}', '--wait']);
    expect(code).toBe(0);
    expect(out).toMatch(/^enqueued: noop job \d+$/m);
    expect(out).toMatch(/^progress 0%$/m);
    expect(out).toMatch(/^progress 100%$/m);
    expect(lastJson(out.slice(out.lastIndexOf('progress 100%') + 14))).toMatchObject({
      state: 'completed',
      result: { sleptMs: 300 },
    });
    // The run is in the history, as `history` shows it: a table for people, the API's JSON for scripts.
    const history = await run(['history', '--job', 'noop', '--limit', '5', '--json']);
    expect(history.code).toBe(0);
    const { runs } = lastJson(history.out) as { runs: { job: string; outcome: string; trigger: string }[] };
    expect(runs[0]).toMatchObject({ job: 'noop', outcome: 'succeeded', trigger: 'ad-hoc' });
    const table = await run(['history', '--job', 'noop', '--limit', '5']);
    expect(table.code).toBe(0);
    const [header, first] = table.out.trim().split('\n');
    expect(header).toMatch(/^STARTED \(Asia\/Dhaka\)\s+JOB\s+TARGET\s+TRIGGER\s+OUTCOME\s+DURATION\s+CODE\s+ERROR$/);
    expect(first).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+noop\s+main\s+ad-hoc\s+succeeded\s+0s\s+-\s+-$/);
  });

  it('enqueue --wait loads only what it needs, and exits once it is done', async () => {
    const worker = h.spawnPgmaint(['worker', '--queues', 'noop']);
    await worker.waitFor(/worker started/);
    const cli = h.spawnPgmaint(['enqueue', 'noop', '--wait'], { LOG_LEVEL: 'warn' }, 'test/support/cli-watched.ts');
    expect(await cli.exited, cli.output()).toBe(0);
    expect(cli.output()).toMatch(/"state": "completed"/);
    // Neither the bucket's SDK, nor YAML for a JSON config, nor the server's parts.
    const loaded = /^packages loaded: (.*)$/m.exec(cli.output())![1]!.split(' ');
    expect(loaded).toContain('bullmq');
    for (const heavy of [
      '@aws-sdk/client-s3',
      '@aws-sdk/lib-storage',
      'yaml',
      'express',
      '@bull-board/api',
      'prom-client',
    ])
      expect(loaded).not.toContain(heavy);
    // A bound sat out, or the losing timer of a race left armed, would hold the process until it went off.
    expect(cli.output()).toMatch(/^timers that went off after the answer: 0$/m);
  });

  it('schedules: a table with next and last runs, or the API JSON; jobs lists the catalog', async () => {
    const schedules = await run(['schedules', '--json']);
    expect(schedules.code).toBe(0);
    const list = (lastJson(schedules.out) as { schedules: { id: string; nextRun: string; target: string }[] })
      .schedules;
    expect(list.map((s) => s.id)).toContain('backup-main-nightly');
    expect(list.find((s) => s.id === 'backup-main-nightly')).toMatchObject({
      target: 'main',
      nextRun: expect.stringMatching(/T02:00:00\.000\+06:00$/),
      lastRun: null,
    });
    const table = await run(['schedules']);
    expect(table.code).toBe(0);
    const lines = table.out.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+JOB\s+TARGET\s+CRON\s+ZONE\s+SPREAD\s+NEXT RUN \(ZONE\)\s+LAST\s+WHEN$/);
    // SPREAD "-": the default schedules are not spread.
    const row = String.raw`^backup-main-nightly\s+backup\s+main\s+0 2 \* \* \*\s+Asia/Dhaka\s+-\s+`;
    expect(lines.find((l) => l.startsWith('backup-main-nightly '))).toMatch(
      new RegExp(String.raw`${row}[\d-]{10} 02:00:00 \+06:00\s+never run\s+-$`),
    );
    expect(lines).toHaveLength(list.length + 1);
    const jobs = await run(['jobs', '--json']);
    expect(jobs.code).toBe(0);
    expect((lastJson(jobs.out) as { jobs: { name: string }[] }).jobs.map((j) => j.name)).toEqual(
      expect.arrayContaining(['backup', 'pitr-drill', 'drop-expired-partitions', 'warm-cache']),
    );
    expect((await run(['jobs'])).out).toMatch(/^pitr-drill\s+\S/m);
  });

  it('status: queues and workers, alerts, backups and runway on one screen, or the API JSON', async () => {
    const json = await run(['status', '--json']);
    expect(json.code).toBe(0);
    const report = lastJson(json.out) as {
      queues: { queue: string; workers: number; unserved: boolean }[];
      alerts: unknown[];
      targets: { target: string; dumpAgeSeconds: number | null }[];
      errors: object;
    };
    expect(report.queues.map((q) => q.queue)).toEqual(expect.arrayContaining(['backup', 'noop']));
    expect(report.targets).toEqual([expect.objectContaining({ target: 'main', dumpAgeSeconds: null })]);
    expect(report.errors).toEqual({});
    const table = await run(['status']);
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/^pgmaint status at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+06:00 \(Asia\/Dhaka\)$/m);
    expect(table.out).toMatch(/^QUEUE\s+WORKERS\s+WAITING\s+ACTIVE\s+DELAYED\s+FAILED$/m);
    expect(table.out).toMatch(/^backup\s+0\s+\d+\s+0\s+\d+\s+\d+\s+NO WORKER$/m);
    expect(table.out).toMatch(/^TARGET\s+DUMP\s+BASE BACKUP\s+PITR DRILL\s+ARCHIVE LAG\s+RECOVERY WINDOW$/m);
    expect(table.out).toMatch(/^main\s+none\s+none\s+never\s+-\s+-$/m);
  });

  it('seed fills an empty database once; a second seed leaves it alone', async () => {
    const first = await run(['seed', '--scale', 'small']);
    expect(first.code).toBe(0);
    const seeded = lastJson(first.out) as { scale: string; rows: Record<string, number> };
    expect(seeded.scale).toBe('small');
    expect(seeded.rows['sales.sale_order_line']).toBeGreaterThan(1000);
    const { rows } = await h.admin.query('select count(*)::int n from sales.sale_order_line');
    expect(rows[0].n).toBe(seeded.rows['sales.sale_order_line']);
    const again = await run(['seed', '--scale', 'small']);
    expect(again.code).toBe(0);
    expect((lastJson(again.out) as { rows: object }).rows).toEqual({});
  });

  it('monitor runs the alert monitor alone and stops cleanly on SIGTERM', async () => {
    const monitor = h.spawnPgmaint(['monitor']);
    await monitor.waitFor(/alert monitor started/);
    monitor.child.kill('SIGTERM');
    expect(await monitor.exited).toBe(0);
  });
});
