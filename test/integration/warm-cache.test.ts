// warm-cache against real PostgreSQL and a real Redis database number of its own:
// keys with TTLs, per-row keys, one bad query that fails only its key.
import { Redis } from 'ioredis';
import { afterAll, assert, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import type { WarmCacheResult } from '../../jobs/warm-cache.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let cache: Redis;
let bullRedis: Redis;
const prefix = `warm-test-${process.pid}:`;

beforeAll(async () => {
  h = await createHarness('warm');
  await h.admin.query(`create schema farm; create table farm.animal (id int primary key, tag text, status text);
    insert into farm.animal select g, 'BD-' || g, (array['active','dry','sold'])[1 + g % 3] from generate_series(1,
      30) g`);
  h.env.CACHE_REDIS_URL = `${inject('redisUrl')}/5`;
  h.configFile({
    cache: {
      redisUrlEnv: 'CACHE_REDIS_URL',
      keyPrefix: prefix,
      queries: [
        {
          key: 'herd:summary',
          sql: 'select status, count(*)::int as n from farm.animal group by status order by status',
          ttlSeconds: 3600,
        },
        { key: 'herd:broken', sql: 'select * from farm.no_such_table', ttlSeconds: 60 },
        {
          key: 'animal:{id}',
          sql: 'select id, tag, status from farm.animal where id <= $1',
          params: [5],
          ttlSeconds: 120,
          perRow: true,
        },
        {
          key: 'herd:write-attempt',
          sql: "insert into farm.animal values (999, 'x', 'active') returning id",
          ttlSeconds: 60,
        },
      ],
    },
  });
  cache = new Redis(`${inject('redisUrl')}/5`);
  bullRedis = new Redis(inject('redisUrl'));
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['warm-cache']);
});
afterAll(async () => {
  cache.disconnect();
  bullRedis.disconnect();
  await h.close();
});

describe('warm-cache', () => {
  it('writes keys with TTLs into the cache database; a bad query and a write fail only their keys', async () => {
    const { job } = await rt.queues.enqueue('warm-cache', {});
    const { state, job: done } = await waitForFinished(rt.queues.get('warm-cache'), job.id!);
    expect(state).toBe('completed');
    const r = done.returnvalue as WarmCacheResult;
    assert(!('note' in r), r.note);
    expect(r.keysWritten).toBe(6); // the summary and five animals
    expect(r.bytes).toBeGreaterThan(0);
    expect(r.failed).toEqual([
      {
        key: 'herd:broken',
        error: expect.stringMatching(/relation "farm.no_such_table" does not exist \(SQLSTATE 42P01\)/),
      },
      { key: 'herd:write-attempt', error: expect.stringMatching(/read-only transaction \(SQLSTATE 25006\)/) },
    ]);
    const summary = JSON.parse((await cache.get(`${prefix}herd:summary`))!);
    expect(summary.rows).toEqual([
      { status: 'active', n: 10 },
      { status: 'dry', n: 10 },
      { status: 'sold', n: 10 },
    ]);
    const ttl = await cache.ttl(`${prefix}herd:summary`);
    expect(ttl).toBeGreaterThan(3500);
    expect(ttl).toBeLessThanOrEqual(3600);
    expect(JSON.parse((await cache.get(`${prefix}animal:3`))!)).toEqual({ id: 3, tag: 'BD-3', status: 'active' });
    expect(await cache.ttl(`${prefix}animal:3`)).toBeGreaterThan(100);
    expect(await cache.exists(`${prefix}animal:6`)).toBe(0);
    // Nothing in BullMQ's database, and the read-only transaction wrote nothing.
    expect(await bullRedis.keys(`${prefix}*`)).toEqual([]);
    expect((await h.admin.query('select count(*)::int as n from farm.animal where id = 999')).rows[0].n).toBe(0);
    expect(r.cacheHitRatio === null || (r.cacheHitRatio >= 0 && r.cacheHitRatio <= 1)).toBe(true);
  });

  it('refuses keys that are not declared when the job is asked for, naming them', async () => {
    const waiting = await rt.queues.get('warm-cache').getWaitingCount();
    await expect(rt.queues.enqueue('warm-cache', { keys: ['herd:summary', 'nope'] })).rejects.toMatchObject({
      issues: [
        {
          path: 'keys.1',
          message: expect.stringMatching(
            /^"nope" is not declared in cache.queries for target main \(known: .*herd:summary/,
          ),
        },
      ],
    });
    expect(await rt.queues.get('warm-cache').getWaitingCount()).toBe(waiting);
  });
});
