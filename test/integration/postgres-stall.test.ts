// PostgreSQL stalled under a running server: the run history's database (here also the
// target) behind a proxy that stops answering, as a cluster stopped with SIGSTOP does (it
// still accepts connections, and says nothing). Every API route and Bull Board answer
// within 5 s; what reads PostgreSQL is a 503 naming it and its variable; /readyz says which
// check failed; round after round still answers (no client of the pool stays stuck); and
// once PostgreSQL answers again the same server reads the history again.
import { ask as askServer } from '../support/ask.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOARD_PATH, ROUTES } from '../../src/http/routes.ts';
import { startServer } from '../../src/http/server.ts';
import { createHarness, type Harness, waitUntil } from '../support/harness.ts';
import { type StallProxy, startStallProxy } from '../support/stall-proxy.ts';

let h: Harness;
let proxy: StallProxy;
let base: string;

/** What every request must do: answer within this, whatever PostgreSQL does. */

beforeAll(async () => {
  h = await createHarness('pg_stall');
  const db = new URL(h.dbUrl);
  proxy = await startStallProxy(db.hostname, Number(db.port));
  const rt = h.runtime({ env: { DATABASE_URL: proxy.via(h.dbUrl) } });
  await rt.history.migrate();
  // The server's own sampler: /metrics and /api/status serve its snapshot.
  const { port } = await startServer(rt, { port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  proxy.resume();
  await h.close();
  await proxy.close();
});

/** One request with the 5 s deadline, to this file's server. */
const ask = (method: string, url: string, body?: { json?: unknown; form?: string }) =>
  askServer(base, method, url, body);

const NAMES_POSTGRES = /^PostgreSQL \(DATABASE_URL postgres:\/\/[^)]*@127\.0\.0\.1:\d+\/t_pg_stall_\w+\) /;

/** Every route of the route table (a new route is covered by itself) and Bull Board's API, at once. */
async function expectEveryRouteAnswers(): Promise<void> {
  const answers = await Promise.all(
    ROUTES.map(async (r) => {
      const url = r.path.replace(':name', 'noop').replace(':queue', 'noop').replace(':id', '1');
      const body =
        r.body === 'json' ? { json: { sleepMs: 0 } } : r.body === 'form' ? { form: 'token=not-a-token' } : undefined;
      return { route: r, answer: await ask(r.method, url, body) };
    }),
  );
  for (const { route, answer } of answers) {
    const seen = `${route.method.toUpperCase()} ${route.path} answered ${answer.status} ${answer.text.slice(0, 300)}`;
    if (route.postgres === 'required') {
      expect(answer.status, seen).toBe(503);
      expect(JSON.parse(answer.text).error, seen).toMatch(NAMES_POSTGRES);
      expect(JSON.parse(answer.text).error, seen).toMatch(/ did not answer within \d+(\.\d+)? s; try again$/);
    } else expect(answer.status, seen).toBeLessThan(route.path === '/readyz' ? 504 : 500);
  }
  // /readyz: not ready, and (with a token) which check failed, naming PostgreSQL; Redis is fine.
  const ready = answers.find((a) => a.route.path === '/readyz')!.answer;
  expect(ready.status, ready.text).toBe(503);
  const { checks } = JSON.parse(ready.text) as { checks: Record<string, { ok: boolean; error?: string }> };
  expect(checks.redis).toEqual({ ok: true });
  expect(checks['target:main']?.ok).toBe(false);
  expect(checks['target:main']?.error).toMatch(NAMES_POSTGRES);
  // The enqueue needs Redis only.
  expect(answers.find((a) => a.route.path === '/api/jobs/:name')!.answer.status).toBe(202);

  const board = await ask('get', `${BOARD_PATH}/api/queues`);
  expect(board.status, board.text).toBe(200);
}

describe('PostgreSQL stalled under the server (a proxy that stops answering), then answering again', () => {
  it('every route and the board answer within 5 s, 503 naming PostgreSQL; the server reads it again', async () => {
    // Before: the history answers, and the sampler has a snapshot to serve.
    expect((await ask('get', '/api/history')).status).toBe(200);
    await waitUntil(async () => (await ask('get', '/api/status')).status === 200, 30_000, 'a first snapshot');
    proxy.stall();
    try {
      // Round after round: a stalled read never keeps a client of the pool for the next one.
      for (let round = 0; round < 3; round++) await expectEveryRouteAnswers();
    } finally {
      proxy.resume();
    }
    await waitUntil(async () => (await ask('get', '/readyz')).status === 200, 30_000, 'the server to be ready again');
    const history = await ask('get', '/api/history');
    expect(history.status, history.text).toBe(200);
    expect(JSON.parse(history.text).runs).toEqual(expect.any(Array));
    expect((await ask('get', '/api/backups')).status).toBe(200);
  });
});
