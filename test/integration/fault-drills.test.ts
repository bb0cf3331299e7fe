// Fault drills on real processes and servers: PostgreSQL stopped under a running
// backup, a full backup disk, a worker SIGKILLed inside create-partitions'
// transaction, and Redis restarted (append-only, as in docker-compose) under
// running workers and the server.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dumpDir, listDumps } from '../../src/backup/catalog.ts';
import { startRedis, type PostgresInstance } from '../../src/dev/devstack.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  waitForFinished,
  waitUntil,
  waitUntilBlocked,
  type Harness,
} from '../support/harness.ts';

let h: Harness;
let cluster: PostgresInstance;
let pool: pg.Pool;

const fastRecovery = { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 };

beforeAll(async () => {
  h = await createHarness('fault_drills');
  ({ pg: cluster, pool } = await h.ownCluster());
  pool.on('error', () => undefined); // idle clients lose their server in the first drill
  await pool.query(
    `create table ledger as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, 150000) g`,
  );
  h.configFile({
    worker: fastRecovery,
    jobs: { backup: { attempts: 6, backoffMs: 1000 }, 'create-partitions': { attempts: 3, backoffMs: 500 } },
  });
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

async function outcomes(queue: string, jobId: string): Promise<string[]> {
  const { rows } = await pool.query(
    `select outcome from pgmaint.run_history where queue = $1 and job_id = $2 order by id`,
    [queue, jobId],
  );
  return rows.map((r) => r.outcome);
}

describe('PostgreSQL stopped during a backup', () => {
  it(
    'the attempt fails, the retries wait out the outage with backoff, and one verified dump results, no partial ' +
      'file',
    async () => {
      const rt = h.runtime({ schedules: [] });
      const workers = startWorkers(rt, ['backup']);
      // pg_dump waits behind this lock, so the server stops while the dump is under way.
      const holder = new pg.Client({ connectionString: cluster.url('dairy') });
      await holder.connect();
      holder.on('error', () => undefined);
      await holder.query('begin; lock table ledger in access exclusive mode');
      const { job } = await rt.queues.enqueue('backup', {});
      await waitUntilBlocked(pool, `application_name like 'pgmaint/backup/%'`, 'pg_dump to wait on its lock');
      await cluster.stop('fast');
      await new Promise((r) => setTimeout(r, 2500));
      await cluster.start();
      await holder.end().catch(() => undefined);

      const { state, job: done } = await waitForFinished(rt.queues.get('backup'), job.id!, 120_000);
      expect(state).toBe('completed');
      expect(done.attemptsMade).toBeGreaterThanOrEqual(1);
      const dumps = (await listDumps(h.backupDir, 'main')).dumps;
      expect(dumps).toHaveLength(1);
      expect(dumps[0]!.manifest.rowCounts!['public.ledger']).toBe(150000);
      expect(fs.readdirSync(dumpDir(h.backupDir, 'main')).filter((e) => e.startsWith('.'))).toEqual([]);
      await rt.history.flush();
      const history = await outcomes('backup', job.id!);
      expect(history.at(-1)).toBe('succeeded');
      expect(history).toContain('retrying');
      await workers.close(5000);
    },
  );
});

describe('a full backup disk', () => {
  it('fails with a message naming BACKUP_DIR and the full disk, and leaves no temporary file', async () => {
    const mount = path.join(h.dir, 'small-disk');
    fs.mkdirSync(mount, { recursive: true });
    // A 1 MB file system: the compressed dump of ledger is several MB.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mount]);
    try {
      h.configFile({ worker: fastRecovery, jobs: { backup: { attempts: 2, backoffMs: 200 } } });
      const rt = h.runtime({ schedules: [], env: { BACKUP_DIR: mount } });
      const workers = startWorkers(rt, ['backup']);
      const { job } = await rt.queues.enqueue('backup', {});
      const { state, job: done } = await waitForFinished(rt.queues.get('backup'), job.id!, 60_000);
      expect(state).toBe('failed');
      expect(done.attemptsMade).toBe(2);
      expect(done.failedReason).toMatch(
        /^PROCESS_FAILED: BACKUP_DIR: .*small-disk.* is full \(no space left on device\); the partial dump was removed/,
      );
      expect(fs.readdirSync(dumpDir(mount, 'main'))).toEqual([]);
      expect((await listDumps(mount, 'main')).dumps).toEqual([]);
      await workers.close(5000);
      await rt.close();
    } finally {
      execFileSync('umount', [mount]);
    }
  });
});

describe('a worker SIGKILLed inside create-partitions', () => {
  it('leaves no half-created partition; another worker creates them all and moves the stranded rows once', async () => {
    await pool.query(`
      create schema iot;
      create table iot.reading (read_at timestamptz not null, v int) partition by range (read_at);
      create table iot.reading_default partition of iot.reading default;
      insert into iot.reading values (now() + interval '1 day', 1), (now() + interval '1 day 1 hour', 2), (now() +
        interval '2 days', 3);`);
    h.configFile({
      worker: fastRecovery,
      partitions: [{ table: 'iot.reading', column: 'read_at', interval: 'day', premake: 3, lockTimeout: '60s' }],
    });
    const rt = h.runtime({ schedules: [] });
    await rt.history.migrate();
    // SHARE lets the catalog reads and counts through but not the ATTACH (which must
    // scan DEFAULT): the job waits inside its transaction, its first partition table
    // already created.
    const holder = await pool.connect();
    await holder.query('begin; lock table iot.reading_default in share mode');
    const first = h.spawnPgmaint(['worker', '--queues', 'create-partitions']);
    await first.waitFor(/worker started/);
    const { job } = await rt.queues.enqueue('create-partitions', {});
    await waitUntilBlocked(pool, `query like '%attach partition%'`, 'create-partitions to wait inside its transaction');
    first.child.kill('SIGKILL');
    await first.exited;
    await holder.query('rollback');
    holder.release();

    const second = h.spawnPgmaint(['worker', '--queues', 'create-partitions']);
    await second.waitFor(/worker started/);
    const { state } = await waitForFinished(rt.queues.get('create-partitions'), job.id!, 60_000);
    expect(state).toBe('completed');
    const tables = await pool.query<{ name: string; attached: boolean }>(
      `select c.relname as name, exists (select 1 from pg_inherits i where i.inhrelid = c.oid) as attached
         from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'iot' and c.relkind in ('r',
           'p') and c.relname <> 'reading'`,
    );
    // Every table in the schema is an attached partition: nothing half-made is left lying around.
    expect(tables.rows.filter((t) => !t.attached)).toEqual([]);
    expect(tables.rows.length).toBeGreaterThanOrEqual(5); // today + 3 ahead + DEFAULT
    const counts = await pool.query(
      `select (select count(*) from iot.reading)::int as total, (select count(*) from iot.reading_default)::int as ` +
        `in_default`,
    );
    expect(counts.rows[0]).toEqual({ total: 3, in_default: 0 });
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});

describe('Redis restarted under running workers and the server', () => {
  it('they reconnect by themselves; no job is lost; the schedules are intact; the API enqueues again', async () => {
    const redisDir = path.join(h.dir, 'redis-aof');
    let redis = await startRedis({ dir: redisDir, appendonly: true });
    const env = { REDIS_URL: redis.url };
    h.configFile({ worker: fastRecovery });
    // The test's own view of the queues waits through the restart, as a worker does.
    const rt = h.runtime({ env, redis: 'patient' });
    await rt.history.migrate();
    const server = h.spawnPgmaint(['server'], env);
    await server.waitFor(/server listening/);
    const port = Number(/"port":(\d+)/.exec(server.output())![1]);
    const worker = h.spawnPgmaint(['worker', '--queues', 'noop'], env);
    await worker.waitFor(/worker started/);
    const schedulersBefore = (await Promise.all(rt.queues.all().map((q) => q.getJobSchedulers(0, -1))))
      .flat()
      .map((s) => s.key)
      .sort();
    expect(schedulersBefore.length).toBeGreaterThan(5);

    const ids: string[] = [];
    for (let i = 0; i < 40; i++) ids.push((await rt.queues.enqueue('noop', { sleepMs: 150 })).job.id!);
    const noop = rt.queues.get('noop');
    await waitUntil(async () => (await noop.getCompletedCount()) >= 5, 30_000, 'some jobs to complete');
    await redis.stop(); // SIGTERM: redis writes its append-only file and exits
    await new Promise((r) => setTimeout(r, 1500));
    redis = await startRedis({ dir: redisDir, port: redis.port, appendonly: true });

    for (const id of ids) expect((await waitForFinished(noop, id, 60_000)).state).toBe('completed');
    const schedulersAfter = (await Promise.all(rt.queues.all().map((q) => q.getJobSchedulers(0, -1))))
      .flat()
      .map((s) => s.key)
      .sort();
    expect(schedulersAfter).toEqual(schedulersBefore);
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };
    await waitUntil(
      async () => (await fetch(`http://127.0.0.1:${port}/readyz`, { headers })).status === 200,
      30_000,
      'the server to be ready again',
    );
    const res = await fetch(`http://127.0.0.1:${port}/api/jobs/noop`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ sleepMs: 10 }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    expect((await waitForFinished(noop, id, 30_000)).state).toBe('completed');
    expect(server.child.exitCode).toBeNull();
    expect(worker.child.exitCode).toBeNull();
    await rt.close();
    await h.killChildren();
    await redis.stop();
  });
});
