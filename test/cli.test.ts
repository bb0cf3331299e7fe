// The CLI commands as a person runs them: real processes against the test
// PostgreSQL and Redis, asserting what they print and how they exit.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness } from './support/harness.ts';

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
    // The run is in the history, as `history` shows it.
    const history = await run(['history', '--job', 'noop', '--limit', '5']);
    expect(history.code).toBe(0);
    const rows = lastJson(history.out) as { job: string; outcome: string; trigger: string }[];
    expect(rows[0]).toMatchObject({ job: 'noop', outcome: 'succeeded', trigger: 'ad-hoc' });
  });

  it('schedules lists every schedule with its next run; jobs lists the catalog', async () => {
    const schedules = await run(['schedules']);
    expect(schedules.code).toBe(0);
    const list = lastJson(schedules.out) as { id: string; nextRun: string }[];
    expect(list.map((s) => s.id)).toContain('backup-main-nightly');
    expect(list.find((s) => s.id === 'backup-main-nightly')!.nextRun).toMatch(/T02:00:00\.000\+06:00$/);
    const jobs = await run(['jobs']);
    expect(jobs.code).toBe(0);
    expect((lastJson(jobs.out) as { name: string }[]).map((j) => j.name)).toEqual(
      expect.arrayContaining(['backup', 'pitr-drill', 'drop-expired-partitions', 'warm-cache']),
    );
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
