import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { HealthSampler } from '../../src/monitoring/sampler.ts';
import { Auth } from '../../src/http/auth.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, VIEWER_TOKEN, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let app: ReturnType<typeof createApp>;
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
const viewer = { Authorization: `Bearer ${VIEWER_TOKEN}` };

beforeAll(async () => {
  h = await createHarness('http');
  rt = h.runtime();
  await rt.scheduler.sync();
  app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
});
afterAll(() => h.close());

describe('HTTP API', () => {
  it('/healthz is open; everything else needs a token (401)', async () => {
    await request(app).get('/healthz').expect(200, { ok: true });
    await request(app).post('/api/jobs/noop').send({}).expect(401);
    await request(app).get('/api/schedules').set('Authorization', 'Bearer not-the-token-at-all').expect(401);
    await request(app).get('/admin/queues/api/queues').expect(401);
  });

  it('admin enqueues (202); viewer reads but gets 403 on writes', async () => {
    const res = await request(app).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(202);
    expect(res.body).toEqual({ id: expect.any(String), queue: 'noop', name: 'noop', existing: false });
    await request(app).post('/api/jobs/noop').set(viewer).send({}).expect(403);
    const job = await request(app).get(`/api/jobs/noop/${res.body.id}`).set(viewer).expect(200);
    expect(job.body).toMatchObject({
      state: 'waiting',
      progress: 0,
      result: null,
      failedReason: null,
      attemptsMade: 0,
    });
  });

  it('400 with field-level issues for a bad payload; 404 for an unknown job', async () => {
    const res = await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .send({ sleepMs: -5, target: 'x;drop' })
      .expect(400);
    expect(res.body.issues).toEqual(
      expect.arrayContaining([
        { path: 'sleepMs', message: expect.stringMatching(/>=0|greater/) },
        { path: 'target', message: expect.stringMatching(/target name/) },
      ]),
    );
    const unknownTarget = await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .send({ target: 'reporting' })
      .expect(400);
    expect(unknownTarget.body.issues).toEqual([
      { path: 'target', message: 'unknown target "reporting" (known: main)' },
    ]);
    await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .set('content-type', 'application/json')
      .send('{"sleepMs": ')
      .expect(400);
    await request(app).post('/api/jobs/no-such-job').set(admin).send({}).expect(404);
    const misspelt = await request(app).post('/api/jobs/bakup').set(admin).send({}).expect(404);
    expect(misspelt.body.error).toMatch(/^unknown job "bakup"; did you mean "backup"\? \(known: .*\bbackup\b/);
    expect(misspelt.body.jobs).toContain('backup');
    await request(app).get('/api/jobs/noop/999999').set(admin).expect(404);
    await request(app).get('/api/jobs/nope/1').set(admin).expect(404);
  });

  it('lists schedules with their next run in their own time zone', async () => {
    const res = await request(app).get('/api/schedules').set(viewer).expect(200);
    const nightly = res.body.schedules.find((s: { id: string }) => s.id === 'backup-main-nightly');
    expect(nightly.nextRun).toMatch(/T02:00:00\.000\+06:00$/);
    expect(nightly.scheduledInRedis).toBe(new Date(Date.parse(nightly.nextRun)).toISOString());
  });

  it('GET /api/status is the one-screen report `pgmaint status --json` prints', async () => {
    const withHealth = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN), {
      health: new HealthSampler(rt, new HealthReader(rt), 0),
    });
    await request(withHealth).get('/api/status').expect(401);
    const res = await request(withHealth).get('/api/status').set(viewer).expect(200);
    expect(Object.keys(res.body).sort()).toEqual([
      'ageSeconds',
      'alerts',
      'at',
      'errors',
      'governor',
      'partitions',
      'queues',
      'sampledAt',
      'source',
      'targets',
      'timeZone',
    ]);
    expect(res.body.timeZone).toBe('Asia/Dhaka');
    expect(res.body.source).toBe('reading');
    expect(res.body.targets).toEqual([
      {
        target: 'main',
        reachable: true,
        dumpAgeSeconds: null,
        baseBackupAgeSeconds: null,
        drill: null,
        archiveLagSeconds: null,
        recoveryWindowSeconds: null,
      },
    ]);
    expect(res.body.queues.find((q: { queue: string }) => q.queue === 'backup')).toMatchObject({
      workers: 0,
      unserved: true,
    });
  });

  it("GET /api/jobs is the catalog with this server's run settings, for a viewer too", async () => {
    const res = await request(app).get('/api/jobs').set(viewer).expect(200);
    expect(res.body.jobs.find((j: { name: string }) => j.name === 'noop')).toEqual({
      name: 'noop',
      description: expect.stringMatching(/^Does nothing/),
      defaults: { attempts: 3, backoffMs: 1000, timeoutMs: 3_600_000, concurrency: 4, heavy: false },
    });
    await request(app).get('/api/jobs?verbose=1').set(viewer).expect(400);
    await request(app).get('/api/jobs').expect(401);
  });

  it('/readyz checks Redis and every target; without a token it answers the status only (a probe)', async () => {
    await request(app).get('/readyz').expect(200, { ok: true });
    const res = await request(app).get('/readyz').set(viewer).expect(200);
    // Without a health sampler, each target's check is its cluster's live probe.
    expect(res.body).toEqual({
      ok: true,
      checks: {
        redis: { ok: true },
        [`cluster:${rt.config.targets.get('main')!.cluster}`]: { ok: true, target: 'main' },
        'target:main': { ok: true },
      },
    });
  });

  it(
    'signs a browser in with a token: HttpOnly, SameSite=Strict cookie; viewer cookie is read-only on Bull ' + 'Board',
    async () => {
      await request(app).get('/admin/queues').set('Accept', 'text/html').expect(303).expect('Location', '/login');
      await request(app).post('/login').type('form').send({ token: 'wrong-token-wrong-token' }).expect(401);
      const login = await request(app).post('/login').type('form').send({ token: VIEWER_TOKEN }).expect(303);
      const cookie = login.headers['set-cookie']![0]!;
      expect(cookie).toMatch(/^pgmaint_session=.+; Path=\/; HttpOnly; SameSite=Strict/);
      const sessionCookie = cookie.split(';')[0]!;
      const queues = await request(app).get('/admin/queues/api/queues').set('Cookie', sessionCookie).expect(200);
      expect(queues.body.queues.map((q: { name: string }) => q.name).sort()).toEqual(rt.registry.names().sort());
      expect(queues.body.queues.every((q: { readOnlyMode: boolean }) => q.readOnlyMode)).toBe(true);
      await request(app).put('/admin/queues/api/queues/noop/clean/completed').set('Cookie', sessionCookie).expect(403);
      // A tampered cookie is refused.
      await request(app)
        .get('/admin/queues/api/queues')
        .set('Cookie', sessionCookie.replace('viewer', 'admin'))
        .expect(401);

      const adminLogin = await request(app).post('/login').type('form').send({ token: ADMIN_TOKEN }).expect(303);
      const adminCookie = adminLogin.headers['set-cookie']![0]!.split(';')[0]!;
      const adminQueues = await request(app).get('/admin/queues/api/queues').set('Cookie', adminCookie).expect(200);
      expect(adminQueues.body.queues.every((q: { readOnlyMode: boolean }) => !q.readOnlyMode)).toBe(true);
    },
  );

  it('is never open by default: the server refuses to start without ADMIN_TOKEN', async () => {
    const { startServer } = await import('../../src/http/server.ts');
    const noAuth = h.runtime({ env: { ADMIN_TOKEN: '' } });
    await expect(startServer(noAuth, { port: 0 })).rejects.toThrow(/ADMIN_TOKEN: required/);
  });

  it('sends security headers, refuses an oversized body (413) and rate-limits enqueues per client (429)', async () => {
    const limited = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN), { enqueueRateLimit: 3 });
    const first = await request(limited).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(202);
    expect(first.headers['x-frame-options']).toBe('DENY');
    expect(first.headers['x-content-type-options']).toBe('nosniff');
    expect(first.headers['content-security-policy']).toMatch(/default-src 'self'/);
    expect(first.headers['x-powered-by']).toBeUndefined();
    await request(limited).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(202);
    await request(limited).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(202);
    const refused = await request(limited).post('/api/jobs/noop').set(admin).send({ sleepMs: 0 }).expect(429);
    expect(refused.body.error).toMatch(/too many enqueue requests/);
    // Reads are not limited.
    await request(limited).get('/api/schedules').set(admin).expect(200);
    await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .set('content-type', 'application/json')
      .send(JSON.stringify({ pad: 'x'.repeat(70_000) }))
      .expect(413);
  });
});
