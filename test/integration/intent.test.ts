// A request means what it says, or it is refused with the field named: unknown keys,
// bodies not declared JSON, fields naming configured things, deduplication that never
// merges different requests, jobs written behind the API, cross-origin cookie writes,
// and bad query strings. Each refusal is a 4xx, never a 500.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, VIEWER_TOKEN, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let app: ReturnType<typeof createApp>;
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };

beforeAll(async () => {
  h = await createHarness('intent');
  h.configFile({
    partitions: [
      { table: 'app.events', column: 'ts', interval: 'day', retention: '30 days' },
      { table: 'app.keep', column: 'ts', interval: 'day' },
    ],
    cache: { queries: [{ key: 'herd:count', sql: 'select 1 as n', ttlSeconds: 60 }] },
  });
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  await rt.queues.connection.ping();
  app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
});
afterAll(() => h.close());

async function adminCookie(): Promise<string> {
  const login = await request(app).post('/login').type('form').send({ token: ADMIN_TOKEN }).expect(303);
  return login.headers['set-cookie']![0]!.split(';')[0]!;
}

describe('payloads are strict', () => {
  it('a misspelt key is refused with 400 naming it, never stripped into a real run', async () => {
    const waiting = await rt.queues.get('drop-expired-partitions').getWaitingCount();
    const res = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ dryrun: true })
      .expect(400);
    expect(res.body.issues).toEqual([
      {
        path: 'dryrun',
        message: expect.stringMatching(
          /^unknown field; did you mean "dryRun"\? \(known: target, tables, dryRun, now, governor\)$/,
        ),
      },
    ]);
    expect(await rt.queues.get('drop-expired-partitions').getWaitingCount()).toBe(waiting);
    const notObject = await request(app)
      .post('/api/jobs/noop')
      .set(admin)
      .set('content-type', 'application/json')
      .send('[1,2]')
      .expect(400);
    expect(notObject.body.issues).toEqual([{ path: '(payload)', message: 'must be a JSON object, not an array' }]);
  });

  it('a body not declared JSON is refused with 415; no body at all means {}', async () => {
    const form = await request(app)
      .post('/api/jobs/prune-backups')
      .set(admin)
      .type('form')
      .send('{"dryRun":true}')
      .expect(415);
    expect(form.body.error).toMatch(
      /request body must be JSON: send Content-Type: application\/json \(got "application\/x-www-form-urlencoded"\)/,
    );
    await request(app).post('/api/jobs/noop').set(admin).set('content-type', 'text/plain').send('{}').expect(415);
    const empty = await request(app).post('/api/jobs/noop').set(admin).expect(202);
    expect(empty.body).toMatchObject({ queue: 'noop', existing: false });
  });

  it('fields naming configured things are checked at enqueue: tables, keys, target, scratchTarget', async () => {
    const tables = await request(app)
      .post('/api/jobs/create-partitions')
      .set(admin)
      .send({ tables: ['app.events', 'app.nosuch'] })
      .expect(400);
    expect(tables.body.issues).toEqual([
      { path: 'tables.1', message: 'no partition policy for app.nosuch on target main (known: app.events, app.keep)' },
    ]);
    // A policy without retention is not something retention can be asked to do.
    const retention = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ tables: ['app.keep'] })
      .expect(400);
    expect(retention.body.issues[0]).toEqual({
      path: 'tables.0',
      message: 'no partition policy with a retention for app.keep on target main (known: app.events)',
    });
    const keys = await request(app)
      .post('/api/jobs/warm-cache')
      .set(admin)
      .send({ keys: ['herd:cnt'] })
      .expect(400);
    expect(keys.body.issues).toEqual([
      { path: 'keys.0', message: '"herd:cnt" is not declared in cache.queries for target main (known: herd:count)' },
    ]);
    const target = await request(app).post('/api/jobs/backup').set(admin).send({ target: 'reporting' }).expect(400);
    expect(target.body.issues).toEqual([{ path: 'target', message: 'unknown target "reporting" (known: main)' }]);
    const scratch = await request(app)
      .post('/api/jobs/restore-check')
      .set(admin)
      .send({ scratchTarget: 'spare' })
      .expect(400);
    expect(scratch.body.issues).toEqual([{ path: 'scratchTarget', message: 'unknown target "spare" (known: main)' }]);
  });

  it('an unknown schedule id in scheduler.disabled stops the process at start, naming it', async () => {
    const file = path.join(h.dir, 'disabled.json');
    fs.writeFileSync(
      file,
      JSON.stringify({ redis: { prefix: `{t-${h.id}}` }, scheduler: { disabled: ['backup-main-nigthly'] } }),
    );
    expect(() => h.runtime({ env: { PGMAINT_CONFIG: file } })).toThrow(
      /scheduler\.disabled\.0: no schedule "backup-main-nigthly" \(known: base-backup-main-nightly, backup-main-/,
    );
  });
});

describe('deduplication never merges different requests', () => {
  it('the same request twice is one job, and the answer says why; any other field makes a job of its own', async () => {
    const first = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ tables: ['app.events'] })
      .expect(202);
    const again = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ target: 'main', tables: ['app.events'], dryRun: false })
      .expect(202);
    expect(again.body).toEqual({
      id: first.body.id,
      queue: 'drop-expired-partitions',
      name: 'drop-expired-partitions',
      existing: true,
      reason: `an identical drop-expired-partitions request (same payload) is already waiting as job ${first.body.id}`,
    });
    const dry = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ tables: ['app.events'], dryRun: true })
      .expect(202);
    const otherNow = await request(app)
      .post('/api/jobs/drop-expired-partitions')
      .set(admin)
      .send({ tables: ['app.events'], now: '2026-01-01T00:00:00Z' })
      .expect(202);
    const ids = [first.body.id, dry.body.id, otherNow.body.id];
    expect(new Set(ids).size).toBe(3);
    expect([dry.body.existing, otherNow.body.existing]).toEqual([false, false]);
    const backup = await request(app).post('/api/jobs/backup').set(admin).send({}).expect(202);
    expect((await request(app).post('/api/jobs/backup').set(admin).send({}).expect(202)).body).toMatchObject({
      id: backup.body.id,
      existing: true,
    });
    expect(
      (await request(app).post('/api/jobs/backup').set(admin).send({ compress: 9 }).expect(202)).body,
    ).toMatchObject({ existing: false });
  });
});

describe('jobs written behind the API', () => {
  it('fail unrecoverably, naming the key, whether it is in the payload or in the job data', async () => {
    const worker = startWorkers(rt, ['noop']);
    try {
      const queue = rt.queues.get('noop');
      const inPayload = await queue.add(
        'noop',
        { payload: { target: 'main', sleepms: 5 }, trigger: 'ad-hoc' } as never,
        { attempts: 3 },
      );
      const flat = await queue.add('noop', { sleepMs: 5 } as never, { attempts: 3 });
      const a = await waitForFinished(queue, inPayload.id!);
      const b = await waitForFinished(queue, flat.id!);
      expect([a.state, a.job.attemptsMade]).toEqual(['failed', 1]);
      expect(a.job.failedReason).toMatch(/^PAYLOAD: invalid payload: sleepms: unknown field; did you mean "sleepMs"\?/);
      expect([b.state, b.job.attemptsMade]).toEqual(['failed', 1]);
      expect(b.job.failedReason).toMatch(/sleepMs: unknown key in job data .*payload fields go under "payload"/);
    } finally {
      await worker.close(1000);
    }
  });
});

describe('HTTP and the browser', () => {
  it(
    'a cookie-authenticated write from another origin is refused (403); our own pages and bearer clients are ' + 'not',
    async () => {
      const cookie = await adminCookie();
      const host = '127.0.0.1:3000';
      const foreign = await request(app)
        .post('/api/jobs/noop')
        .set('Host', host)
        .set('Cookie', cookie)
        .set('Origin', 'http://127.0.0.1:8080')
        .send({})
        .expect(403);
      expect(foreign.body.error).toMatch(
        /cross-origin request refused: Origin http:\/\/127\.0\.0\.1:8080 is not this server/,
      );
      await request(app)
        .post('/api/jobs/noop')
        .set('Cookie', cookie)
        .set('Sec-Fetch-Site', 'same-site')
        .send({})
        .expect(403);
      await request(app).post('/api/jobs/noop').set('Cookie', cookie).send({}).expect(403);
      // Bull Board's own API is guarded the same way.
      await request(app)
        .put('/admin/queues/api/queues/noop/pause')
        .set('Host', host)
        .set('Cookie', cookie)
        .set('Origin', 'http://evil.example')
        .expect(403);
      await request(app)
        .post('/api/jobs/noop')
        .set('Host', host)
        .set('Cookie', cookie)
        .set('Origin', `http://${host}`)
        .send({ sleepMs: 1 })
        .expect(202);
      await request(app)
        .post('/api/jobs/noop')
        .set('Cookie', cookie)
        .set('Sec-Fetch-Site', 'same-origin')
        .set('Origin', 'null')
        .send({ sleepMs: 2 })
        .expect(202);
      await request(app)
        .post('/api/jobs/noop')
        .set(admin)
        .set('Origin', 'http://elsewhere.example')
        .send({ sleepMs: 3 })
        .expect(202);
    },
  );

  it('the CSP never tells a browser to upgrade to https (compose serves plain HTTP)', async () => {
    const res = await request(app).get('/login').expect(200);
    expect(res.headers['content-security-policy']).not.toMatch(/upgrade-insecure-requests/);
    expect(res.headers['content-security-policy']).toMatch(/form-action 'self'/);
  });

  it('bad query strings are 400 and BullMQ key names are never read as jobs (404)', async () => {
    for (const q of ['limit=-1', 'limit=1.5', 'limit=abc', 'limit=100000', 'job=%00', 'job=nosuch', 'jobb=noop']) {
      const res = await request(app).get(`/api/history?${q}`).set(admin);
      expect(res.status, q).toBe(400);
      expect(res.body.error, q).toMatch(/^(limit|job): |^unknown query parameter "jobb"/);
    }
    await request(app).get('/api/history?limit=5&job=noop').set(admin).expect(200);
    for (const id of ['events', 'meta', 'id', 'completed', 'failed', 'wait', 'stalled-check', 'marker', 'de', '%00']) {
      const res = await request(app).get(`/api/jobs/noop/${id}`).set(admin);
      expect(res.status, id).toBe(404);
      expect(res.body.error, id).toMatch(/^no job /);
    }
  });

  it("Bull Board's API bodies have our 64 kB limit (413)", async () => {
    const cookie = await adminCookie();
    const res = await request(app)
      .post('/admin/queues/api/queues/noop/add')
      .set('Cookie', cookie)
      .set('Sec-Fetch-Site', 'same-origin')
      .set('content-type', 'application/json')
      .send(JSON.stringify({ name: 'noop', data: { pad: 'x'.repeat(70_000) } }));
    expect(res.status).toBe(413);
  });

  it('with Redis unreachable, an enqueue answers 503 at once and nothing is enqueued later', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const down = h.runtime({ schedules: [], env: { REDIS_URL: `redis://127.0.0.1:${port}` } });
    const downApp = createApp(down, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const started = Date.now();
    const res = await request(downApp).post('/api/jobs/noop').set(admin).send({}).expect(503);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(res.body.error).toMatch(
      /^Redis \(REDIS_URL redis:\/\/127\.0\.0\.1:\d+\) is not reachable .*nothing was enqueued/,
    );
    await request(downApp).get('/api/jobs/noop/1').set(admin).expect(503);
  });
});
