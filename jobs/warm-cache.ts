// warm-cache: the dashboard queries declared in the config file (cache.queries) run
// read-only on their targets, and their results go to the cache Redis (which may be
// another instance or database number than BullMQ's) with a TTL, a thousand keys
// per server-side script call (a standalone or Sentinel Redis; not Cluster). A query
// that fails fails its key, not the run; the result names it.
import { Redis } from 'ioredis';
import type pg from 'pg';
import { z } from 'zod';
import type { Config } from '../src/core/config.ts';
import { coerceError, describeError, GovernorDeferredError, PermanentJobError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { defineJob, type JobResult, targetField, type JobContext } from '../src/runner/job-definition.ts';
import { withTransaction } from '../src/core/sql.ts';

export const payload = z.object({
  target: targetField,
  /** Only these keys (as declared); default every query of this target. */
  keys: z.array(z.string()).max(1000).optional(),
  /** statement_timeout of each query. */
  statementTimeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});

type WarmQuery = Config['cache']['queries'][number];

/** SET key value EX ttl for every KEYS[i] / ARGV[i]; the TTL is the last argument. */
const SET_MANY_EX = `local ttl = ARGV[#ARGV]
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'EX', ttl) end
return #KEYS`;
const SET_BATCH = 1000;
type CacheRedis = Redis & { pgmaintSetManyEx(numKeys: number, ...args: string[]): Promise<number> };

interface Written {
  key: string;
  keys: number;
  bytes: number;
  rows: number;
  ms: number;
  /** Of which turning rows into keys and JSON values, and writing them to Redis. */
  encodeMs: number;
  writeMs: number;
}

/** "product:{product_tmpl_id}" filled from a row; a missing column is an error naming it. */
function fillKey(template: string, row: Record<string, unknown>): string {
  return template.replace(/\{([A-Za-z0-9_]+)\}/g, (_, col: string) => {
    if (!(col in row))
      throw new PermanentJobError(`key template ${template}: the query returns no column "${col}"`, 'BAD_KEY');
    return String(row[col]);
  });
}

async function runReadOnly(pool: pg.Pool, q: WarmQuery, timeoutMs: number): Promise<Record<string, unknown>[]> {
  return withTransaction(
    pool,
    async (client) => {
      await client.query(`select set_config('statement_timeout', $1, true)`, [String(timeoutMs)]);
      return (await client.query(q.sql, q.params)).rows;
    },
    'begin transaction read only',
  );
}

async function warmOne(ctx: JobContext, redis: Redis, q: WarmQuery, timeoutMs: number): Promise<Written> {
  const t0 = Date.now();
  const rows = await runReadOnly(ctx.pool, q, timeoutMs);
  const prefix = ctx.config.cache.keyPrefix;
  const generatedAt = new Date().toISOString();
  const e0 = Date.now();
  const entries: [string, string][] = q.perRow
    ? rows.map((row) => [prefix + fillKey(q.key, row), JSON.stringify(row)])
    : [[prefix + q.key, JSON.stringify({ generatedAt, rows })]];
  let bytes = 0;
  for (const [, value] of entries) bytes += Buffer.byteLength(value);
  const w0 = Date.now();
  const encodeMs = w0 - e0;
  // Batches of keys set by one server-side script each (sent back to back on one
  // connection): per-command client overhead, not Redis, is what limits a big warm-up.
  const batches: Promise<number>[] = [];
  for (let i = 0; i < entries.length; i += SET_BATCH) {
    const batch = entries.slice(i, i + SET_BATCH);
    batches.push(
      (redis as CacheRedis).pgmaintSetManyEx(
        batch.length,
        ...batch.map(([k]) => k),
        ...batch.map(([, v]) => v),
        String(q.ttlSeconds),
      ),
    );
  }
  await Promise.all(batches);
  return {
    key: q.key,
    keys: entries.length,
    bytes,
    rows: rows.length,
    ms: Date.now() - t0,
    encodeMs,
    writeMs: Date.now() - w0,
  };
}

/** keyspace_hits / (hits + misses) from INFO stats, or null before any read. */
async function hitRatio(redis: Redis): Promise<number | null> {
  const info = await redis.info('stats');
  const hits = Number(/keyspace_hits:(\d+)/.exec(info)?.[1] ?? 0);
  const misses = Number(/keyspace_misses:(\d+)/.exec(info)?.[1] ?? 0);
  return hits + misses ? Math.round((hits / (hits + misses)) * 10_000) / 10_000 : null;
}

const job = defineJob({
  name: 'warm-cache',
  description:
    'Runs the dashboard queries of cache.queries read-only and writes their results to the cache Redis with TTLs.',
  payload,
  defaults: { attempts: 2, backoffMs: 10_000, timeoutMs: 30 * 60_000, concurrency: 1 },
  deduplicate: true,
  checkConfig: (p, config) => {
    const declared = config.cache.queries.filter((q) => q.target === p.target).map((q) => q.key);
    return (p.keys ?? []).flatMap((k, i) =>
      declared.includes(k)
        ? []
        : [
            {
              path: `keys.${i}`,
              message:
                `"${k}" is not declared in cache.queries for target ${p.target} (known: ` +
                `${declared.join(', ') || 'none'})`,
            },
          ],
    );
  },
  async handler(ctx, p) {
    const all = ctx.config.cache.queries.filter((q) => q.target === p.target);
    const queries = p.keys ? all.filter((q) => p.keys!.includes(q.key)) : all;
    if (!queries.length)
      return { keysWritten: 0, bytes: 0, written: [], failed: [], note: 'no cache.queries for this target' };

    const redis = new Redis(ctx.config.cache.redisUrl, {
      maxRetriesPerRequest: 2,
      connectionName: 'pgmaint-cache',
      lazyConnect: true,
    });
    redis.on('error', () => undefined); // reported through the commands that fail
    redis.defineCommand('pgmaintSetManyEx', { lua: SET_MANY_EX }); // EVALSHA, loaded on first use
    const started = Date.now();
    try {
      await redis.connect();
      // Loaded up front: otherwise every batch sent before the first reply goes out as
      // EVALSHA, fails NOSCRIPT, and is sent again whole as EVAL.
      await redis.script('LOAD', SET_MANY_EX);
      const written: Written[] = [];
      const failed: { key: string; error: string }[] = [];
      const left: string[] = [];
      for (const [i, q] of queries.entries()) {
        // A unit: one query and its batches of keys; it only reads the target.
        try {
          await ctx.governor.gate(`warm ${q.key}`, { readOnly: true });
        } catch (err) {
          if (!(err instanceof GovernorDeferredError) || !written.length) throw err;
          left.push(...queries.slice(i).map((x) => x.key));
          await ctx.log(`${err.message}; left for the next run: ${left.join(', ')}`);
          break;
        }
        try {
          const w = await warmOne(ctx, redis, q, p.statementTimeoutMs);
          written.push(w);
          await ctx.progress(
            (100 * (i + 1)) / queries.length,
            `${q.key}: ${w.keys} keys, ${w.bytes} bytes in ${w.ms} ms`,
          );
        } catch (err) {
          const error = describeError(coerceError(err));
          failed.push({ key: q.key, error });
          await ctx.log(`${q.key}: failed: ${error}`);
        }
      }
      if (!written.length)
        throw new Error(`every cache query failed: ${failed.map((f) => `${f.key}: ${f.error}`).join('; ')}`);
      return {
        keysWritten: written.reduce((a, w) => a + w.keys, 0),
        bytes: written.reduce((a, w) => a + w.bytes, 0),
        durationMs: Date.now() - started,
        cacheHitRatio: await hitRatio(redis),
        written,
        failed,
        left,
      };
    } finally {
      redis.disconnect();
    }
  },
});

export default job;

/** What a warm-cache run returns (its result in the run history and the API). */
export type WarmCacheResult = JobResult<typeof job>;
