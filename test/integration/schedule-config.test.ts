// Schedules and fleets from the config file: one default set per target, entries that
// change or add schedules, validation at start, and Redis following the file.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextRun } from '../../src/core/cron.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { createHarness, type Harness } from '../support/harness.ts';

let h: Harness;
beforeAll(async () => {
  h = await createHarness('schedcfg');
});
afterAll(() => h.close());

/** A target per name, all pointing at the test database (only the config matters here). */
function fleet(names: string[], extra: Record<string, object> = {}) {
  return Object.fromEntries(names.map((n) => [n, { url: h.dbUrl, ...extra[n] }]));
}

const idsOf = (rt: { schedules: { id: string }[] }) => rt.schedules.map((s) => s.id).sort();

describe('schedules from the config file', () => {
  it('three targets yield three sets of schedules, each with its own ids and target', () => {
    h.configFile({ targets: fleet(['reporting', 'pos']) });
    const rt = h.runtime();
    for (const target of ['main', 'reporting', 'pos']) {
      const own = rt.schedules.filter((s) => s.payload.target === target);
      expect(own.map((s) => s.id).sort(), target).toEqual(
        [
          `archive-check-${target}-hourly`,
          `backup-${target}-nightly`,
          `base-backup-${target}-nightly`,
          `index-maintenance-${target}-weekly`,
          `index-report-${target}-weekly`,
          `integrity-check-${target}-nightly`,
          `integrity-check-${target}-weekly-full`,
          `pitr-drill-${target}-weekly`,
          `query-stats-${target}-15min`,
          `prune-backups-${target}-daily`,
          `restore-check-${target}-weekly`,
          `vacuum-${target}-nightly`,
          // The ERP's own sales tables are in main only.
          ...(target === 'main' ? [`sales-rollup-${target}-nightly`] : []),
        ].sort(),
      );
      for (const s of own) expect(s.tz).toBe('Asia/Dhaka');
    }
  });

  it('partition, retention and cache schedules come with a target that has policies or queries for them', () => {
    h.configFile({
      targets: fleet(['pos'], { pos: { repackTables: ['public.sale'] } }),
      partitions: [
        { target: 'pos', table: 'public.sale', column: 'created_at', interval: 'day', retention: '30 days' },
      ],
      cache: { queries: [{ key: 'k', sql: 'select 1', ttlSeconds: 60, target: 'pos' }] },
    });
    const rt = h.runtime();
    const ids = idsOf(rt);
    expect(ids).toEqual(
      expect.arrayContaining([
        'partitions-pos-hourly',
        'retention-pos-daily',
        'warm-cache-pos-business-hours',
        'repack-pos-monthly',
      ]),
    );
    expect(rt.schedules.find((x) => x.id === 'repack-pos-monthly')).toMatchObject({
      cron: '30 2 1 * *',
      payload: { target: 'pos', tables: ['public.sale'] },
    });
    expect(ids).not.toContain('repack-main-monthly');
    expect(ids).not.toContain('partitions-main-hourly');
    expect(ids).not.toContain('warm-cache-main-business-hours');
  });

  it('a target may take none of the defaults, or list the ids it wants', () => {
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        ...fleet(['reporting', 'pos'], {
          reporting: { schedules: ['backup-reporting-nightly', 'vacuum-reporting-nightly'] },
        }),
      },
    });
    const ids = idsOf(h.runtime());
    expect(ids.filter((id) => id.includes('-main-'))).toEqual([]);
    expect(ids.filter((id) => id.includes('-reporting-'))).toEqual([
      'backup-reporting-nightly',
      'vacuum-reporting-nightly',
    ]);
    expect(ids.filter((id) => id.includes('-pos-'))).toHaveLength(12);
  });

  it('an entry with a default id changes only the fields it gives; a new id adds a schedule', () => {
    h.configFile({
      targets: fleet(['reporting']),
      schedules: [
        { id: 'backup-reporting-nightly', cron: '30 23 * * *', payload: { format: 'directory', jobs: 2 } },
        { id: 'vacuum-main-nightly', tz: 'UTC' },
        { id: 'reporting-vacuum-orders', job: 'vacuum-analyze', cron: '0 12 * * 1-5', target: 'reporting' },
      ],
    });
    const rt = h.runtime();
    const byId = new Map(rt.schedules.map((s) => [s.id, s]));
    expect(byId.get('backup-reporting-nightly')).toMatchObject({
      job: 'backup',
      cron: '30 23 * * *',
      tz: 'Asia/Dhaka',
      payload: { target: 'reporting', format: 'directory', jobs: 2 },
    });
    expect(byId.get('vacuum-main-nightly')).toMatchObject({ cron: '0 3 * * *', tz: 'UTC' });
    expect(byId.get('reporting-vacuum-orders')).toMatchObject({
      job: 'vacuum-analyze',
      cron: '0 12 * * 1-5',
      tz: 'Asia/Dhaka',
      catchUp: 'latest',
      overlap: 'skip',
      payload: { target: 'reporting' },
    });
  });

  it('refuses at start, naming the key: cron, zone, job, target, payload, unknown keys and ids', () => {
    const refusal = (file: object) => {
      h.configFile(file);
      try {
        h.runtime();
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    const entry = (e: object) => ({ schedules: [{ id: 'x', job: 'vacuum-analyze', cron: '0 3 * * *', ...e }] });
    expect(refusal(entry({ cron: '0 0 3 * * *' }))).toMatch(/^schedules\.0\.cron: cron "0 0 3 \* \* \*" must have 5/);
    expect(refusal(entry({ cron: '0 25 * * *' }))).toMatch(/^schedules\.0\.cron: .*hour value "25" is out of range/);
    expect(refusal(entry({ tz: 'Asia/Dacca-ish' }))).toMatch(/^schedules\.0\.tz: "Asia\/Dacca-ish" is not an IANA/);
    expect(refusal(entry({ job: 'vacuum' }))).toMatch(
      /^schedules\.0\.job: no job "vacuum"; did you mean "vacuum-analyze"\? \(known: .*vacuum-analyze/,
    );
    expect(refusal(entry({ target: 'nowhere' }))).toMatch(/^schedules\.0\.payload\.target: unknown target "nowhere"/);
    expect(refusal(entry({ payload: { budgetSeconds: 'ten' } }))).toMatch(/^schedules\.0\.payload\.budgetSeconds: /);
    expect(refusal(entry({ payload: { dryrun: true } }))).toMatch(
      /^schedules\.0\.payload\.dryrun: unknown field; did you mean "dryRun"/,
    );
    expect(refusal(entry({ crom: '0 3 * * *' }))).toMatch(/schedules\.0: Unrecognized key: "crom"/);
    expect(refusal({ schedules: [{ id: 'new-one', cron: '0 3 * * *' }] })).toMatch(
      /^schedules\.0\.job: is required for a new schedule/,
    );
    expect(refusal({ targets: { main: { schedules: ['backup-nightly'] } } })).toMatch(
      /^targets\.main\.schedules\.0: no default schedule "backup-nightly" .*known: .*backup-main-nightly/,
    );
    expect(refusal({ ...entry({}), scheduler: { disabled: ['backup-nightly'] } })).toMatch(
      /^scheduler\.disabled\.0: no schedule "backup-nightly"/,
    );
  });

  it('a cron changed in the file and a restart move the next run; an entry removed leaves Redis', async () => {
    const start = async (file: object) => {
      h.configFile({ targets: { main: { schedules: ['vacuum-main-nightly'] } }, ...file });
      const rt = h.runtime();
      await rt.scheduler.sync();
      return rt;
    };
    const extra = { id: 'extra-vacuum', job: 'vacuum-analyze', cron: '0 12 * * *' };
    const first = await start({ schedules: [{ id: 'vacuum-main-nightly', cron: '0 3 * * *' }, extra] });
    const queue = first.queues.get('vacuum-analyze');
    const before = await queue.getJobScheduler('vacuum-main-nightly');
    expect(before!.next).toBe(nextRun('0 3 * * *', 'Asia/Dhaka', Date.now()));
    expect(await queue.getJobScheduler('extra-vacuum')).toBeDefined();
    await first.close();

    // "Restart" with the cron moved to 04:45 and the extra entry gone from the file.
    const second = await start({ schedules: [{ id: 'vacuum-main-nightly', cron: '45 4 * * *' }] });
    const after = await second.queues.get('vacuum-analyze').getJobScheduler('vacuum-main-nightly');
    expect(after!.next).toBe(nextRun('45 4 * * *', 'Asia/Dhaka', Date.now()));
    expect(after!.next).not.toBe(before!.next);
    expect(await second.queues.get('vacuum-analyze').getJobScheduler('extra-vacuum')).toBeUndefined();
    const delayed = await second.queues.get('vacuum-analyze').getDelayed();
    expect(delayed.map((j) => j.repeatJobKey)).toEqual(['vacuum-main-nightly']);
    await second.close();
  });

  it('a cron that never fires stops server and worker with exit 2 naming its key, and Redis is untouched', async () => {
    h.configFile({ targets: { main: { schedules: ['backup-main-nightly'] } } });
    const first = h.runtime();
    await first.scheduler.sync();
    const queue = first.queues.get('backup');
    const scheduler = async () => {
      const s = await queue.getJobScheduler('backup-main-nightly');
      return { pattern: s?.pattern, next: s?.next };
    };
    const pending = async () => (await queue.getDelayed()).map((j) => j.id).sort();
    const before = { scheduler: await scheduler(), pending: await pending() };
    expect(before.scheduler).toEqual({ pattern: '0 2 * * *', next: nextRun('0 2 * * *', 'Asia/Dhaka', Date.now()) });
    expect(before.pending).toHaveLength(1);

    // One file: a changed cron first, then a new schedule whose cron never fires (Feb 31).
    h.configFile({
      targets: { main: { schedules: ['backup-main-nightly'] } },
      schedules: [
        { id: 'backup-main-nightly', cron: '45 1 * * *' },
        { id: 'x', job: 'noop', cron: '0 3 31 2 *' },
      ],
    });
    expect(() => h.runtime()).toThrow(ConfigError);
    for (const role of ['worker', 'server']) {
      const p = h.spawnPgmaint([role]);
      expect(await p.exited, role).toBe(2);
      expect(p.output().trim(), role).toMatch(
        /^pgmaint: schedules\.1\.cron: cron "0 3 31 2 \*" has no run in the next five years$/,
      );
    }
    expect({ scheduler: await scheduler(), pending: await pending() }).toEqual(before);
    expect(await first.queues.get('noop').getJobScheduler('x')).toBeUndefined();
    await first.close();
  });
});
