// A fleet's runs spread over their window: each target's stable offset, the runs
// BullMQ schedules with it, what `pgmaint schedules` shows, and refusals.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkers } from '../../src/cli/roles.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { nextRun } from '../../src/core/cron.ts';
import { spreadOffsetMs } from '../../src/core/spread.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import type { Schedule, ScheduleDescription } from '../../src/runner/scheduler.ts';
import { createHarness, waitForFinished, waitUntil, type Harness } from '../support/harness.ts';

const WINDOW_MS = 45 * 60_000;
const TARGETS = ['main', 'dairy-north', 'dairy-south', 'dairy-east', 'dairy-west'];

let h: Harness;
let rt: Runtime;

/** One noop schedule per target at 03:00 UTC, spread over 45 minutes. */
const spreadSchedules: Schedule[] = TARGETS.map((target) => ({
  id: `noop-${target}-nightly`,
  job: 'noop',
  cron: '0 3 * * *',
  tz: 'UTC',
  payload: { target },
  spread: '45m',
}));

function fleetConfig(extra: object = {}) {
  const others = TARGETS.filter((t) => t !== 'main');
  const targets = Object.fromEntries(others.map((t) => [t, { url: h.dbUrl, schedules: [`vacuum-${t}-nightly`] }]));
  return { targets: { ...targets, main: { schedules: ['vacuum-main-nightly'] } }, ...extra };
}

beforeAll(async () => {
  h = await createHarness('spread');
  h.configFile(fleetConfig());
  rt = h.runtime({ schedules: spreadSchedules });
  await rt.history.migrate();
  await rt.scheduler.sync();
});
afterAll(() => h.close());

describe('runs spread over their window', () => {
  it("a target's offset comes from its name: the same every time, whole seconds inside the window", () => {
    const names = Array.from({ length: 400 }, (_, i) => `target-${i}`);
    const offsets = names.map((n) => spreadOffsetMs(n, WINDOW_MS));
    expect(names.map((n) => spreadOffsetMs(n, WINDOW_MS))).toEqual(offsets);
    for (const o of offsets) {
      expect(o).toBeGreaterThanOrEqual(0);
      expect(o).toBeLessThan(WINDOW_MS);
      expect(o % 1000).toBe(0);
    }
    // Spread, not bunched: each fifth of the window holds 10–30 % of the 400 (sha256 is fixed, so this is too).
    const fifths = [0, 1, 2, 3, 4].map((f) => offsets.filter((o) => Math.floor((o / WINDOW_MS) * 5) === f).length);
    for (const n of fifths) expect(n).toBeGreaterThanOrEqual(40);
    for (const n of fifths) expect(n).toBeLessThanOrEqual(120);
    expect(spreadOffsetMs('main', 0)).toBe(0);
  });

  it("each target's next run lies in [cron time, cron time + spread), and they differ", async () => {
    const queue = rt.queues.get('noop');
    const cronTime = nextRun('0 3 * * *', 'UTC', Date.now());
    const next = await Promise.all(spreadSchedules.map(async (s) => (await queue.getJobScheduler(s.id))!.next!));
    for (const [i, t] of next.entries()) {
      expect(t - cronTime, TARGETS[i]).toBeGreaterThanOrEqual(0);
      expect(t - cronTime, TARGETS[i]).toBeLessThan(WINDOW_MS);
      expect(t - cronTime, TARGETS[i]).toBe(spreadOffsetMs(TARGETS[i]!, WINDOW_MS));
    }
    expect(new Set(next).size).toBe(TARGETS.length);
    // The pending run in Redis is at that time too.
    const delayed = await queue.getDelayed();
    for (const [i, s] of spreadSchedules.entries()) {
      const job = delayed.find((j) => j.repeatJobKey === s.id)!;
      expect(job.timestamp + job.delay, s.id).toBe(next[i]);
    }
  });

  it('a spread run that fired schedules the next one at the same offset', async () => {
    const s = spreadSchedules[1]!;
    const queue = rt.queues.get('noop');
    const before = (await queue.getJobScheduler(s.id))!.next!;
    const pending = (await queue.getJob(`repeat:${s.id}:${before}`))!;
    startWorkers(rt, ['noop']);
    await pending.promote();
    expect((await waitForFinished(queue, pending.id!)).state).toBe('completed');
    // BullMQ computed the next iteration from the job's repeat options: the offset survived it.
    const after = await waitUntil(async () => {
      const n = (await queue.getJobScheduler(s.id))?.next;
      return n !== undefined && n !== before ? n : undefined;
    });
    // The next night's 03:00 (UTC has no DST) plus the same offset.
    expect(after - before).toBe(86_400_000);
    const offset = spreadOffsetMs(s.payload!.target as string, WINDOW_MS);
    expect(nextRun('0 3 * * *', 'UTC', after - offset - 1)).toBe(after - offset);
  });

  it('GET /api/schedules and pgmaint schedules show the window and each offset, alike in every process', async () => {
    const described = await rt.describeSchedules();
    const mine = described.find((d) => d.id === 'noop-dairy-east-nightly')!;
    const offsetMs = spreadOffsetMs('dairy-east', WINDOW_MS);
    expect(mine.spread).toEqual({ window: '45m', windowMs: WINDOW_MS, offset: expect.any(String), offsetMs });
    expect(Date.parse(mine.nextRunUtc)).toBe(nextRun('0 3 * * *', 'UTC', Date.now() - offsetMs) + offsetMs);

    // The fleet's vacuum spread by the config file (jobs.vacuum-analyze.spread), read by two processes.
    h.configFile(fleetConfig({ jobs: { 'vacuum-analyze': { spread: '45m' } } }));
    const runs = await Promise.all([0, 1].map(() => schedulesJson()));
    expect(runs[0]).toEqual(runs[1]);
    const vacuum = runs[0]!.filter((d) => d.job === 'vacuum-analyze');
    expect(vacuum.map((d) => d.target).sort()).toEqual([...TARGETS].sort());
    for (const d of vacuum) {
      expect(d.spread, d.id).toMatchObject({ window: '45m', offsetMs: spreadOffsetMs(d.target, WINDOW_MS) });
      const cronTime = nextRun('0 3 * * *', 'Asia/Dhaka', Date.now() - d.spread!.offsetMs);
      expect(Date.parse(d.nextRunUtc) - cronTime, d.id).toBe(d.spread!.offsetMs);
    }
    const table = h.spawnPgmaint(['schedules'], { LOG_LEVEL: 'warn' });
    expect(await table.exited).toBe(0);
    const east = vacuum.find((d) => d.target === 'dairy-east')!;
    expect(table.output()).toMatch(
      new RegExp(String.raw`^vacuum-dairy-east-nightly .* \+${east.spread!.offset} of 45m .*$`, 'm'),
    );
  });

  it('refuses a spread as long as the time between runs, or not a duration, naming the key', () => {
    const refusal = (file: object, schedules?: Schedule[]) => {
      h.configFile(file);
      try {
        h.runtime(schedules ? { schedules } : {});
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      return 'accepted';
    };
    const withStats = { targets: { main: { schedules: ['query-stats-main-15min'] } } };
    expect(refusal({ ...withStats, jobs: { 'query-stats-snapshot': { spread: '15m' } } })).toBe(
      'jobs.query-stats-snapshot.spread (schedule "query-stats-main-15min"): 15m is not shorter than the 15m ' +
        'between two runs of "*/15 * * * *"; give a shorter spread',
    );
    expect(refusal({ ...withStats, jobs: { 'query-stats-snapshot': { spread: '10m' } } })).toBe('accepted');
    expect(refusal({ ...withStats, schedules: [{ id: 'query-stats-main-15min', spread: '1h' }] })).toMatch(
      /^schedules\.0\.spread: 1h is not shorter than the 15m between two runs/,
    );
    expect(refusal({ ...withStats, schedules: [{ id: 'query-stats-main-15min', spread: '45 minutes' }] })).toMatch(
      /schedules\.0\.spread: must be a duration such as 45m, 90s, 2h or 1h30m/,
    );
    expect(refusal({}, [{ ...spreadSchedules[0]!, spread: 'soon' }])).toMatch(
      /^schedule "noop-main-nightly" spread: "soon" is not a duration/,
    );
  });
});

/** `pgmaint schedules --json` in a process of its own. */
async function schedulesJson(): Promise<ScheduleDescription[]> {
  const p = h.spawnPgmaint(['schedules', '--json'], { LOG_LEVEL: 'warn' });
  expect(await p.exited).toBe(0);
  const out = p.output();
  return (JSON.parse(out.slice(out.indexOf('{'))) as { schedules: ScheduleDescription[] }).schedules;
}
