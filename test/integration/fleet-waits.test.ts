// A fleet on one connection budget (issue 26): waiting for a session is load, not a fault.
// /readyz costs one live probe per cluster, not one per target (40 targets whose connections
// each take 0.4 s, on a budget of 2: one probe per target could not finish within 3 s); a
// health reading whose reading share is busy does not mark the cluster down; and governed
// runs that hold every run slot's two sessions at a gate still get their governor's reading.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { governorField } from '../../src/core/governor-policy.ts';
import { createLogger } from '../../src/core/logger.ts';
import { startServer } from '../../src/http/server.ts';
import { AlertMonitor } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import { defineJob, targetField } from '../../src/runner/job-definition.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';
import { closedPort } from '../support/ports.ts';

let h: Harness;
const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** A proxy to PostgreSQL that holds each new connection for `delayMs` before it passes anything. */
async function slowProxy(port: number) {
  const sockets = new Set<net.Socket>();
  const proxy = { delayMs: 0, port: 0, close: async (): Promise<unknown> => undefined };
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('error', () => undefined);
    client.pause();
    setTimeout(() => {
      const upstream = net.connect(port, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    }, proxy.delayMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.port = (server.address() as net.AddressInfo).port;
  proxy.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

const withPort = (url: string, port: number, db?: string) => {
  const u = new URL(url);
  u.port = String(port);
  if (db) u.pathname = `/${db}`;
  return u.toString();
};

beforeAll(async () => {
  h = await createHarness('fleet_waits');
});
afterAll(() => h.close());

describe('/readyz at 40 targets of one cluster, on a budget of 2', () => {
  let proxy: Awaited<ReturnType<typeof slowProxy>>;
  const names = Array.from({ length: 40 }, (_, i) => `t${i}`);
  beforeAll(async () => {
    proxy = await slowProxy(Number(new URL(h.dbUrl).port));
  });
  afterAll(() => proxy.close());

  /** A server over the 40 targets (the same database through the proxy) and `more`, with its first snapshot. */
  async function serverWith(more: Record<string, { url: string; schedules: 'none' }> = {}) {
    const targets = Object.fromEntries(
      names.map((n) => [n, { url: withPort(h.dbUrl, proxy.port), schedules: 'none' as const }]),
    );
    h.configFile({ targets: { main: { schedules: 'none' }, ...targets, ...more }, connections: { budget: 2 } });
    const rt = h.runtime({ jobs, schedules: [] });
    proxy.delayMs = 0;
    // One snapshot, taken now (the next is far off); the alerts are not evaluated.
    const server = await startServer(rt, { port: 0, host: '127.0.0.1', sampleIntervalMs: 600_000 });
    server.monitor.stop();
    const base = `http://127.0.0.1:${server.port}`;
    expect((await fetch(`${base}/api/status`, { headers: auth })).status).toBe(200);
    // From now on every new connection to the 40 takes 0.4 s: 40 of them on 2 sessions would take 8 s.
    proxy.delayMs = 400;
    const ready = async () => {
      const res = await fetch(`${base}/readyz`, { headers: auth });
      return {
        status: res.status,
        ...((await res.json()) as { checks: Record<string, { ok: boolean; error?: string }> }),
      };
    };
    return { rt, ready };
  }

  it('answers 200 within its deadline: one live probe per cluster, the targets from the snapshot', async () => {
    const { rt, ready } = await serverWith();
    try {
      const { status, checks } = await ready();
      expect(status, JSON.stringify(checks)).toBe(200);
      expect(checks[`cluster:127.0.0.1:${proxy.port}`]).toEqual({ ok: true, target: 't0' });
      expect(checks[`cluster:${new URL(h.dbUrl).host}`]).toEqual({ ok: true, target: 'main' });
      expect(names.map((n) => checks[`target:${n}`])).toEqual(names.map(() => ({ ok: true })));
      expect(checks.snapshot).toEqual({ ok: true, ageSeconds: expect.any(Number) });
    } finally {
      await rt.close();
    }
  });

  it('answers 503 with a target down: a closed port (live), a database that is gone (snapshot)', async () => {
    const dead = await closedPort();
    const { rt, ready } = await serverWith({
      gone: { url: withPort(h.dbUrl, proxy.port, `${h.id}_no_such_db`), schedules: 'none' },
      down: { url: withPort(h.dbUrl, dead), schedules: 'none' },
    });
    try {
      const { status, checks } = await ready();
      expect(status).toBe(503);
      expect(checks[`cluster:127.0.0.1:${proxy.port}`]).toEqual({ ok: true, target: 't0' });
      expect(checks[`cluster:127.0.0.1:${dead}`]).toMatchObject({ ok: false, target: 'down' });
      expect(checks['target:down']).toEqual({ ok: false, error: expect.stringMatching(/ECONNREFUSED/) });
      expect(checks['target:gone']).toEqual({ ok: false, error: expect.stringMatching(/does not exist/) });
      expect(names.map((n) => checks[`target:${n}`])).toEqual(names.map(() => ({ ok: true })));
    } finally {
      await rt.close();
    }
  });
});

describe("a health reading while the cluster's reading sessions are busy", () => {
  it('waits for a session: the targets stay reachable and only the closed port is alerted on', async () => {
    const dead = await closedPort();
    h.configFile({
      targets: {
        main: { schedules: 'none' },
        r1: { url: h.dbUrl, schedules: 'none' },
        r2: { url: h.dbUrl, schedules: 'none' },
        down: { url: withPort(h.dbUrl, dead), schedules: 'none' },
      },
      connections: { budget: 4, readings: 2 },
    });
    const rt: Runtime = h.runtime({ jobs: [], schedules: [] });
    try {
      // Both reading sessions of the cluster held by something else, for longer than a target's deadline.
      const pool = rt.connections.pool('r1', 'monitor');
      const held = [await pool.connect(), await pool.connect()];
      const monitor = new AlertMonitor(rt, new HealthReader(rt, { targetDeadlineMs: 1000 }), undefined);
      const evaluation = monitor.evaluate();
      await sleep(2500);
      for (const c of held) c.release();
      const { fired } = (await evaluation)!;
      expect(fired.filter((k) => k.startsWith('target-unreachable:'))).toEqual([
        `target-unreachable:127.0.0.1:${dead}:ECONNREFUSED`,
      ]);
      const snapshot = await new HealthReader(rt, { targetDeadlineMs: 1000 }).take();
      expect(snapshot.targets.map((t) => [t.target, t.reachable])).toEqual([
        ['main', true],
        ['r1', true],
        ['r2', true],
        ['down', false],
      ]);
    } finally {
      await rt.close();
    }
  });
});

describe('governed runs holding two sessions each at a gate', () => {
  /** Runs holding their two sessions now. */
  let holding = 0;
  let slotsFull: () => Promise<void> = async () => undefined;
  const twoAtGate = defineJob({
    name: 'two-at-gate',
    description: 'test only: holds two sessions through a governor gate',
    payload: z.object({ target: targetField, governor: governorField }),
    defaults: { attempts: 1, backoffMs: 100, timeoutMs: 60_000, concurrency: 4 },
    async handler(ctx) {
      const sessions = [await ctx.pool.connect(), await ctx.pool.connect()];
      holding++;
      try {
        await slotsFull();
        await ctx.governor.gate('a unit, two sessions held', { readOnly: true });
        return 'passed';
      } finally {
        holding--;
        for (const s of sessions) s.release();
      }
    },
  });

  /**
   * `count` runs on a budget of `budget`: each takes its two sessions, waits until every run slot has, then
   * gates. Their states, and what the worker warned of.
   */
  async function runsOn(budget: number, count: number): Promise<{ states: string[]; warnings: string[] }> {
    h.configFile({ targets: { main: { schedules: 'none' } }, connections: { budget } });
    const warnings: string[] = [];
    const logger = createLogger('warn', {}, { write: (line: string) => warnings.push(JSON.parse(line).msg) });
    const rt = h.runtime({ jobs: [twoAtGate], schedules: [], logger });
    const { runs } = rt.connections.cluster(rt.config.targets.get('main')!.cluster);
    slotsFull = async () => {
      await waitUntil(async () => holding >= runs.size, 10_000, 'every run slot to hold two sessions');
    };
    try {
      // An enqueue while the connection is still being made is refused by design.
      await waitUntil(async () => rt.queues.connection.status === 'ready', 30_000, 'Redis to be ready');
      startWorkers(rt, ['two-at-gate']);
      const queue = rt.queues.get('two-at-gate');
      const enqueued = await Promise.all(
        Array.from({ length: count }, () => rt.queues.enqueue('two-at-gate', { target: 'main' })),
      );
      const states = await Promise.all(
        enqueued.map(async ({ job }) => (await waitForFinished(queue, job.id!, 20_000)).state),
      );
      return { states, warnings };
    } finally {
      await rt.close();
    }
  }

  it('a budget of 4 leaves a session for the governor: both runs pass their gates', async () => {
    const { states, warnings } = await runsOn(4, 2);
    expect(states).toEqual(['completed', 'completed']);
    // The governor read the target: its sampler never went without a session.
    expect(warnings.filter((w) => /no session free/.test(w))).toEqual([]);
  });

  it('a budget of 2 has none to spare: the sampler gives up waiting and the gate lets the run on', async () => {
    const { states, warnings } = await runsOn(2, 1);
    expect(states).toEqual(['completed']);
    expect(warnings).toContainEqual(
      expect.stringMatching(/^governor on main: reading the signals failed: no session free within 5 s/),
    );
  });
});
