// The schedule sync once per deployment: processes starting together write each
// scheduler once (counted with Redis's MONITOR), an unchanged set writes nothing, and a
// changed set (or a scheduler deleted behind pgmaint's back) converges.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { nextRun } from '../../src/core/cron.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, type Spawned } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let monitor: Redis;
/** Scheduler writes (BullMQ's addJobScheduler script) seen on this file's prefix, by scheduler id. */
const writes = new Map<string, number>();

beforeAll(async () => {
  h = await createHarness('sync');
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  const prefix = `{t-${h.id}}`;
  monitor = await new Redis(inject('redisUrl')).monitor();
  const hashes = new Map([
    [`${prefix}:backup:repeat:backup-main-nightly`, 'backup-main-nightly'],
    [`${prefix}:vacuum-analyze:repeat:vacuum-main-nightly`, 'vacuum-main-nightly'],
  ]);
  monitor.on('monitor', (_time: string, args: string[]) => {
    // Each scheduler write (BullMQ's addJobScheduler script) sets the scheduler's hash; reads never do.
    const id = /^hmset$/i.test(args[0] ?? '') ? hashes.get(args[1] ?? '') : undefined;
    if (id) writes.set(id, (writes.get(id) ?? 0) + 1);
  });
});
afterAll(async () => {
  monitor.disconnect();
  await h.close();
});

async function started(procs: Spawned[]): Promise<string[]> {
  await Promise.all(procs.map((p) => p.waitFor(/"msg":"worker started"/)));
  const synced = procs.map((p) => /"msg":"(schedules synced[^"]*)"/.exec(p.output())?.[1] ?? 'none');
  for (const p of procs) p.child.kill('SIGTERM');
  expect(await Promise.all(procs.map((p) => p.exited))).toEqual(procs.map(() => 0));
  // MONITOR reports what Redis ran, in order: once it shows a marker sent now, it has shown the writes before it.
  const marker = `sync-test-marker-${Date.now()}`;
  const seen = new Promise<void>((resolve) => {
    const onCommand = (_t: string, args: string[]) => {
      if (args.includes(marker)) {
        monitor.off('monitor', onCommand);
        resolve();
      }
    };
    monitor.on('monitor', onCommand);
  });
  await rt.queues.connection.echo(marker);
  await seen;
  return synced.sort();
}

const worker = () => h.spawnPgmaint(['worker', '--queues', 'noop']);

describe('schedule sync', () => {
  it('two processes starting at once write each scheduler once; a restart with the same set writes none', async () => {
    h.configFile({ targets: { main: { schedules: ['backup-main-nightly', 'vacuum-main-nightly'] } } });
    const synced = await started([worker(), worker()]);
    expect(Object.fromEntries(writes)).toEqual({ 'backup-main-nightly': 1, 'vacuum-main-nightly': 1 });
    expect(synced).toEqual(['schedules synced', 'schedules synced (unchanged)']);
    const backup = await rt.queues.get('backup').getJobScheduler('backup-main-nightly');
    expect(backup!.next).toBe(nextRun('0 2 * * *', 'Asia/Dhaka', Date.now()));

    const again = await started([worker()]);
    expect(Object.fromEntries(writes)).toEqual({ 'backup-main-nightly': 1, 'vacuum-main-nightly': 1 });
    expect(again).toEqual(['schedules synced (unchanged)']);
  });

  it('a changed set converges: a new cron is written, a schedule left out is removed', async () => {
    h.configFile({
      targets: { main: { schedules: ['backup-main-nightly'] } },
      schedules: [{ id: 'backup-main-nightly', cron: '30 1 * * *' }],
    });
    expect(await started([worker(), worker()])).toEqual(['schedules synced', 'schedules synced (unchanged)']);
    expect(Object.fromEntries(writes)).toEqual({ 'backup-main-nightly': 2, 'vacuum-main-nightly': 1 });
    const backup = await rt.queues.get('backup').getJobScheduler('backup-main-nightly');
    expect(backup).toMatchObject({ pattern: '30 1 * * *', next: nextRun('30 1 * * *', 'Asia/Dhaka', Date.now()) });
    expect(await rt.queues.get('vacuum-analyze').getJobSchedulers(0, -1)).toEqual([]);
    expect((await rt.queues.get('vacuum-analyze').getDelayed()).map((j) => j.id)).toEqual([]);
  });

  it('a scheduler deleted behind its back is written again at the next start', async () => {
    await rt.queues.get('backup').removeJobScheduler('backup-main-nightly');
    expect(await started([worker()])).toEqual(['schedules synced']);
    expect(writes.get('backup-main-nightly')).toBe(3);
    expect((await rt.queues.get('backup').getJobScheduler('backup-main-nightly'))?.pattern).toBe('30 1 * * *');
  });
});
