// The server's health sampler: /metrics and /api/status serve its snapshot and say how
// old it is, `?fresh=1` (admin) takes a new one, the sampler takes one every interval,
// `pgmaint status` on another process reads the snapshot from Redis without connecting to
// any target, and a target that does not answer costs a reading no more than its bound.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../../src/http/server.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import type { StatusReport } from '../../src/monitoring/status.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, createHarness, type Harness, VIEWER_TOKEN, waitUntil } from '../support/harness.ts';
import { closedPort } from '../support/ports.ts';

const TARGETS = ['t1', 't2'];
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
const viewer = { authorization: `Bearer ${VIEWER_TOKEN}` };
let h: Harness;
let config: { targets: Record<string, { url: string; schedules: 'none' }>; redis: { prefix: string } };
let blackhole: net.Server;
const held: net.Socket[] = [];

/** A config file like the harness's, with some targets pointed elsewhere; returns its path. */
function configWith(name: string, urls: Record<string, string>): string {
  const targets = Object.fromEntries(
    Object.entries(config.targets).map(([t, v]) => [t, { ...v, url: urls[t] ?? v.url }]),
  );
  const file = path.join(h.dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify({ ...config, targets }));
  return file;
}

const table = (r: StatusReport, target: string) => r.partitions.find((p) => p.target === target)!;

beforeAll(async () => {
  h = await createHarness('health-snapshot');
  const targets: Record<string, { url: string; schedules: 'none' }> = {};
  for (const t of TARGETS) {
    await h.admin.query(`create database "t_${h.id}_${t}"`);
    const url = new URL(h.dbUrl);
    url.pathname = `/t_${h.id}_${t}`;
    targets[t] = { url: url.toString(), schedules: 'none' };
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    await client.query(`
      create schema iot;
      create table iot.reading (read_at timestamptz not null, v int) partition by range (read_at);
      create table iot.reading_now partition of iot.reading for values from (now() - interval '1 day') to (now() +
        interval '1 day');
      create table iot.reading_default partition of iot.reading default;
      insert into iot.reading values (now() + interval '5 days', 1), (now() + interval '6 days', 2);`);
    await client.end();
  }
  h.configFile({
    targets,
    partitions: TARGETS.map((target) => ({ target, table: 'iot.reading', column: 'read_at', interval: 'day' })),
  });
  config = JSON.parse(fs.readFileSync(h.env.PGMAINT_CONFIG!, 'utf8'));
  // Accepts connections and never answers: a target that hangs rather than refuses.
  blackhole = net.createServer((socket) => held.push(socket));
  await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  for (const s of held) s.destroy();
  blackhole.close();
  await h.close();
});

async function get(base: string, url: string, headers = admin) {
  const res = await fetch(`${base}${url}`, { headers });
  return { status: res.status, text: await res.text() };
}

describe('the health snapshot', () => {
  let rt: Runtime;
  let base: string;
  let sampled: StatusReport;

  beforeAll(async () => {
    rt = h.runtime({ schedules: [] });
    const { port, monitor } = await startServer(rt, { port: 0, host: '127.0.0.1' }); // samples every 30 s
    monitor.stop();
    base = `http://127.0.0.1:${port}`;
  });

  it('/api/status and /metrics serve the sampler snapshot with its age; ?fresh=1 (admin) takes a new one', async () => {
    const first = JSON.parse((await get(base, '/api/status', viewer)).text) as StatusReport;
    expect(first).toMatchObject({ source: 'snapshot', errors: {} });
    expect(first.ageSeconds).toBe(Math.round((Date.parse(first.at) - Date.parse(first.sampledAt)) / 1000));
    expect(table(first, 't1')).toMatchObject({ table: 'iot.reading', defaultRows: 2 });

    // Rows land in t1's DEFAULT partition; the snapshot still shows what it read.
    const t1 = new pg.Client({ connectionString: config.targets.t1!.url });
    await t1.connect();
    await t1.query(`insert into iot.reading select now() + interval '9 days', g from generate_series(1, 3) g`);
    await t1.end();
    const again = JSON.parse((await get(base, '/api/status', viewer)).text) as StatusReport;
    expect(again.sampledAt).toBe(first.sampledAt);
    expect(table(again, 't1').defaultRows).toBe(2);
    const metrics = (await get(base, '/metrics')).text;
    expect(metrics).toMatch(/^pgmaint_health_snapshot_age_seconds \d+(\.\d+)?$/m);
    expect(metrics).toMatch(/^pgmaint_partition_default_rows\{target="t1",table="iot.reading"\} 2$/m);

    // A new reading costs every target: viewers are refused, naming the field; a bad value is a 400.
    const refused = await get(base, '/api/status?fresh=1', viewer);
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.text).error).toMatch(/^fresh: .*admin token/);
    expect((await get(base, '/api/status?fresh=yes')).status).toBe(400);
    expect((await get(base, '/api/status?fersh=1')).status).toBe(400);
    sampled = JSON.parse((await get(base, '/api/status?fresh=1')).text) as StatusReport;
    expect(Date.parse(sampled.sampledAt)).toBeGreaterThan(Date.parse(first.sampledAt));
    expect(table(sampled, 't1').defaultRows).toBe(5);
    // The fresh reading is the snapshot from then on, for every reader.
    expect((JSON.parse((await get(base, '/api/status', viewer)).text) as StatusReport).sampledAt).toBe(
      sampled.sampledAt,
    );
    expect((await get(base, '/metrics')).text).toMatch(
      /^pgmaint_partition_default_rows\{target="t1",table="iot.reading"\} 5$/m,
    );
  });

  it('pgmaint status reads the snapshot in Redis without connecting to any target; without one it reads', async () => {
    // t1 is unreachable for the CLI from now on: only the snapshot can know its partitions.
    const file = configWith('t1-closed', { t1: `postgres://pgmaint@127.0.0.1:${await closedPort()}/nowhere` });
    const json = h.spawnPgmaint(['status', '--json'], { LOG_LEVEL: 'warn', PGMAINT_CONFIG: file });
    expect(await json.exited, json.output()).toBe(0);
    const out = json.output();
    const report = JSON.parse(out.slice(out.search(/^\{/m))) as StatusReport;
    expect(report).toMatchObject({ source: 'snapshot', sampledAt: sampled.sampledAt, errors: {} });
    expect(table(report, 't1')).toMatchObject({
      target: 't1',
      table: 'iot.reading',
      runwaySeconds: expect.any(Number),
      defaultRows: 5,
    });
    expect(table(report, 't1').error).toBeUndefined();
    const text = h.spawnPgmaint(['status'], { LOG_LEVEL: 'warn', PGMAINT_CONFIG: file });
    expect(await text.exited).toBe(0);
    expect(text.output()).toMatch(
      /^Health snapshot: taken at \d\d:\d\d:\d\d, \d+s old \(the server's sampler, every 30s\)$/m,
    );

    // No server keeps a snapshot: the CLI says so and reads every target itself (and meets the closed port).
    await rt.close();
    const redis = new Redis(h.env.REDIS_URL!);
    // The key docs/monitoring.md names.
    expect(await redis.del(`${config.redis.prefix}:health:snapshot`)).toBe(1);
    redis.disconnect();
    const reading = h.spawnPgmaint(['status', '--json'], { LOG_LEVEL: 'warn', PGMAINT_CONFIG: file });
    expect(await reading.exited, reading.output()).toBe(0);
    const readOut = reading.output();
    expect(readOut).toMatch(/^pgmaint: no server has stored a health snapshot in Redis; reading every target here/m);
    const read = JSON.parse(readOut.slice(readOut.search(/^\{/m))) as StatusReport;
    expect(read.source).toBe('reading');
    expect(table(read, 't1').error).toMatch(/ECONNREFUSED/);
    expect(table(read, 't2').defaultRows).toBe(2);
  });

  it('the sampler takes a new snapshot every interval by itself', async () => {
    const rt2 = h.runtime({ schedules: [] });
    const { port, monitor } = await startServer(rt2, { port: 0, host: '127.0.0.1', sampleIntervalMs: 1000 });
    monitor.stop();
    const b = `http://127.0.0.1:${port}`;
    const first = JSON.parse((await get(b, '/api/status')).text) as StatusReport;
    expect(first.source).toBe('snapshot');
    await waitUntil(
      async () => (JSON.parse((await get(b, '/api/status')).text) as StatusReport).sampledAt > first.sampledAt,
      15_000,
      'a new snapshot without asking for one',
    );
    await rt2.close();
  });

  it('a target that accepts and never answers costs a reading its bound; the other targets are read', async () => {
    const file = configWith('t2-hangs', {
      t2: `postgres://pgmaint@127.0.0.1:${(blackhole.address() as net.AddressInfo).port}/hang`,
    });
    const rt3 = h.runtime({ schedules: [], env: { PGMAINT_CONFIG: file } });
    const s = await new HealthReader(rt3, { targetDeadlineMs: 1000 }).take();
    const t1 = s.partitions.find((p) => p.target === 't1')!;
    const t2 = s.partitions.find((p) => p.target === 't2')!;
    expect(t1).toMatchObject({ defaultRows: 5, runwaySeconds: expect.any(Number) });
    expect(t1.error).toBeUndefined();
    // Reached first, within the bound: its tables are then passed by, saying why.
    expect(s.targets.find((t) => t.target === 't2')).toMatchObject({
      reachable: false,
      error: 'did not answer within 1 s',
      code: 'TIMEOUT',
    });
    expect(t2).toMatchObject({ runwaySeconds: null, error: 'target t2 is unreachable: did not answer within 1 s' });
  });
});
