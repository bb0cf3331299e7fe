// One request for many targets: `targets: [...]` or `targets: "all"` on POST
// /api/jobs/:name and `pgmaint enqueue --targets/--all-targets`. Checked whole before
// anything is enqueued, one job per target, one request for the rate limit.
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { startServer } from '../../src/http/server.ts';
import { PayloadError } from '../../src/core/errors.ts';
import { Registry } from '../../src/runner/registry.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, VIEWER_TOKEN } from '../support/harness.ts';

const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const FLEET = ['main', 'north', 'south', 'east'];

let h: Harness;
let rt: Runtime;

beforeAll(async () => {
  h = await createHarness('fleetenq');
  h.configFile({
    targets: Object.fromEntries(FLEET.filter((t) => t !== 'main').map((t) => [t, { url: h.dbUrl, schedules: 'none' }])),
  });
  rt = h.runtime({ schedules: [] });
  await rt.checkRedis();
});
afterAll(() => h.close());

/** Every job in the noop and backup queues, whatever its state. */
async function allJobs(queue: string) {
  return rt.queues.get(queue).getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
}

describe('enqueue on many targets in one request', () => {
  it('one unknown target refuses the whole request, naming targets.2; nothing is enqueued', async () => {
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const res = await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .send({ targets: ['main', 'north', 'nowhere', 'south'], sleepMs: 0 })
      .expect(400);
    expect(res.body.issues).toEqual([
      { path: 'targets.2', message: 'unknown target "nowhere" (known: main, north, south, east)' },
    ]);
    for (const [body, issue] of [
      [{ targets: ['main', 'main'] }, { path: 'targets.1', message: '"main" is listed twice (first as targets.0)' }],
      [{ targets: [] }, { path: 'targets', message: expect.stringMatching(/^must be "all" or a non-empty list/) }],
      [{ targets: 'some' }, { path: 'targets', message: expect.stringMatching(/^must be "all" or a non-empty list/) }],
      [
        { targets: 'all', target: 'main' },
        { path: 'target', message: 'give target (one) or targets (many), not both' },
      ],
      [
        { targets: 'all', sleepMs: -1 },
        { path: 'sleepMs', message: expect.any(String) },
      ],
      [{ targets: ['north', 7] }, { path: 'targets.1', message: 'must be a target name (a string)' }],
    ] as const) {
      const refused = await request(app).post('/api/jobs/noop').set(admin).send(body).expect(400);
      expect(refused.body.issues, JSON.stringify(body)).toEqual([issue]);
    }
    expect(await allJobs('noop')).toEqual([]);
  });

  it('targets "all" with no target configured is refused, naming targets', () => {
    // Not reachable through a config (main is always there); the request is refused, never done for nothing.
    const noop = rt.registry.get('noop')!.def;
    const none = new Registry([noop], { ...rt.config, jobs: {}, targets: new Map() });
    const refusal = (() => {
      try {
        none.parseRequest('noop', { targets: 'all' });
      } catch (err) {
        return err;
      }
    })();
    expect(refusal).toBeInstanceOf(PayloadError);
    expect((refusal as PayloadError).issues).toEqual([{ path: 'targets', message: '"all": no target is configured' }]);
  });

  it('targets "all" enqueues one job per target and counts as one request for the rate limit', async () => {
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN), { enqueueRateLimit: 1 });
    const res = await request(app).post('/api/jobs/noop').set(admin).send({ targets: 'all', sleepMs: 5 }).expect(202);
    expect(res.body).toMatchObject({ queue: 'noop', name: 'noop', enqueued: FLEET.length, refused: 0 });
    expect(res.body.jobs.map((j: { target: string }) => j.target)).toEqual(FLEET);
    const jobs = await allJobs('noop');
    expect(jobs.map((j) => j.id).sort()).toEqual(res.body.jobs.map((j: { id: string }) => j.id).sort());
    for (const j of res.body.jobs as { target: string; id: string; existing: boolean }[]) {
      expect(j.existing).toBe(false);
      const job = jobs.find((x) => x.id === j.id)!;
      expect(job.data).toEqual({ payload: { target: j.target, sleepMs: 5 }, trigger: 'ad-hoc' });
    }
    // The limit is one request a minute: the fleet-wide request was that one.
    await request(app).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(429);
  });

  it('a fleet-wide "backup now" pressed twice: the second is merged per target, with the first job named', async () => {
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const first = await request(app)
      .post('/api/jobs/backup')
      .set(admin)
      .send({ targets: ['north', 'south'] });
    expect(first.status).toBe(202);
    const again = await request(app).post('/api/jobs/backup').set(admin).send({ targets: 'all' }).expect(202);
    expect(again.body.enqueued).toBe(FLEET.length);
    const byTarget = new Map(
      (again.body.jobs as { target: string; existing: boolean; reason?: string }[]).map((j) => [j.target, j]),
    );
    for (const [i, t] of ['north', 'south'].entries()) {
      expect(byTarget.get(t)).toMatchObject({
        id: first.body.jobs[i].id,
        existing: true,
        reason: `an identical backup request (same payload) is already waiting as job ${first.body.jobs[i].id}`,
      });
    }
    expect(byTarget.get('main')!.existing).toBe(false);
    expect(await allJobs('backup')).toHaveLength(FLEET.length);
  });

  it('pgmaint enqueue --targets a,b and --all-targets; an unknown target exits 2 naming targets.1', async () => {
    const before = (await allJobs('noop')).length;
    const refused = h.spawnPgmaint(['enqueue', 'noop', '--targets', 'north,nowhere'], { LOG_LEVEL: 'warn' });
    expect(await refused.exited).toBe(2);
    expect(refused.output()).toMatch(/^pgmaint: invalid payload: targets\.1: unknown target "nowhere"/m);
    expect((await allJobs('noop')).length).toBe(before);

    const some = h.spawnPgmaint(['enqueue', 'noop', '--targets', 'north,east', '--data', '{"sleepMs": 1}']);
    expect(await some.exited).toBe(0);
    const out = some.output();
    const printed = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { target: string; id: string }[] };
    expect(printed.jobs.map((j) => j.target)).toEqual(['north', 'east']);
    expect(out).toMatch(/^enqueued: noop on 2 of 2 targets$/m);

    const all = h.spawnPgmaint(['enqueue', 'noop', '--all-targets', '--data', '{"sleepMs": 2}']);
    expect(await all.exited).toBe(0);
    expect((await allJobs('noop')).length).toBe(before + 2 + FLEET.length);

    const both = h.spawnPgmaint(['enqueue', 'noop', '--all-targets', '--wait'], { LOG_LEVEL: 'warn' });
    expect(await both.exited).toBe(2);
    expect(both.output()).toMatch(/^pgmaint: --wait: follows one run/m);
  });

  it('through the HTTP API (PGMAINT_URL): --targets enqueues one job each; an unknown target is exit 2', async () => {
    const { port } = await startServer(rt, { port: 0, host: '127.0.0.1' });
    const remote = { PGMAINT_URL: `http://127.0.0.1:${port}`, PGMAINT_TOKEN: ADMIN_TOKEN, LOG_LEVEL: 'warn' };
    const laptop = { DATABASE_URL: '', REDIS_URL: '', BACKUP_DIR: '', PGMAINT_CONFIG: '' };
    const before = (await allJobs('noop')).length;
    const refused = h.spawnPgmaint(['enqueue', 'noop', '--targets', 'south,nowhere'], { ...laptop, ...remote });
    expect(await refused.exited, refused.output()).toBe(2);
    expect(refused.output()).toMatch(/^pgmaint: invalid payload: targets\.1: unknown target "nowhere"/m);
    const ok = h.spawnPgmaint(['enqueue', 'noop', '--targets', 'south,main'], { ...laptop, ...remote });
    expect(await ok.exited).toBe(0);
    const out = ok.output();
    const printed = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { target: string; id: string }[] };
    expect(printed.jobs.map((j) => j.target)).toEqual(['south', 'main']);
    expect((await allJobs('noop')).length).toBe(before + 2);
  });
});
