// integrity-check on real PostgreSQL with amcheck: a clean database passes and is not
// read again until written; a damaged heap page and a damaged index page fail the job,
// naming relation and block, and raise the critical corruption alert.
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IntegrityCheckResult } from '../jobs/integrity-check.ts';
import { startWorkers } from '../src/cli/roles.ts';
import type { PostgresInstance } from '../src/dev/devstack.ts';
import { judge } from '../src/monitoring/alerts.ts';
import { HealthReader } from '../src/monitoring/health.ts';
import type { Runtime } from '../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from './support/harness.ts';

let h: Harness;
let rt: Runtime;
let cluster: PostgresInstance;
let db: pg.Pool;

beforeAll(async () => {
  h = await createHarness('integrity');
  ({ pg: cluster, pool: db } = await h.ownCluster());
  db.on('error', () => undefined); // idle clients die with the restarts below
  await db.query(`
    create extension amcheck;
    create schema farm;
    create table farm.milking (id int primary key, animal int, litres numeric, note text);
    insert into farm.milking select g, g % 255, 10 + g % 7, repeat('m', 40) from generate_series(1, 20000) g;
    create index milking_animal on farm.milking (animal);
    create table farm.herd (id int primary key, name text);
    insert into farm.herd select g, 'cow ' || g from generate_series(1, 5000) g;
    select pg_stat_force_next_flush();`);
  rt = h.runtime({ schedules: [] });
  await rt.history.migrate();
  startWorkers(rt, ['integrity-check']);
}, 120_000);
afterAll(() => h.close());

async function run(payload: object) {
  const { job } = await rt.queues.enqueue('integrity-check', payload);
  return waitForFinished(rt.queues.get('integrity-check'), job.id!, 60_000);
}

/** Writes garbage over part of a block of a relation's file, with the server stopped (no cached copy). */
async function damage(relation: string, block: number, at: number): Promise<void> {
  const file = (await db.query(`select pg_relation_filepath($1) as f`, [relation])).rows[0].f as string;
  await db.query('checkpoint');
  await cluster.stop('fast');
  const fd = fs.openSync(path.join(cluster.dataDir, file), 'r+');
  fs.writeSync(fd, Buffer.alloc(64, 0x5a), 0, 64, block * 8192 + at);
  fs.closeSync(fd);
  await cluster.start();
}

describe('integrity-check', () => {
  it('passes a clean database, reading only, and then checks only the tables written since', async () => {
    const first = await run({ schemas: ['farm'] });
    expect(first.state, first.job.failedReason).toBe('completed');
    const r = first.job.returnvalue as IntegrityCheckResult;
    expect(r.heapChecked).toBe(true);
    expect(r.checked.sort()).toEqual(['farm.herd', 'farm.milking']);
    expect(r.indexes).toBe(3);
    expect(r.findings).toEqual([]);

    // The write's table statistics reach the shared counters when its transaction ends.
    await db.query(`update farm.herd set name = name || '!' where id = 1; select pg_stat_force_next_flush()`);
    const second = (await run({ schemas: ['farm'] })).job.returnvalue as IntegrityCheckResult;
    expect(second.checked).toEqual(['farm.herd']);
    const full = (await run({ schemas: ['farm'], full: true })).job.returnvalue as IntegrityCheckResult;
    expect(full.checked.sort()).toEqual(['farm.herd', 'farm.milking']);
  });

  it('a damaged heap page and index page fail the job naming relation and block; the alert is critical', async () => {
    await damage('farm.milking', 3, 7000);
    await damage('farm.milking_animal', 1, 4000);
    const done = await run({ schemas: ['farm'], full: true });
    expect(done.state).toBe('failed');
    expect(done.job.attemptsMade).toBe(1);
    expect(done.job.failedReason).toMatch(/^corruption found in 2 relation\(s\): /);
    expect(done.job.failedReason).toMatch(/farm\.milking block 3: /);
    expect(done.job.failedReason).toMatch(/farm\.milking_animal( block 1)?: /);

    await rt.history.flush();
    const alerts = judge(await new HealthReader(rt, 0).read(), rt.config.alerts);
    expect(alerts.find((a) => a.rule === 'corruption')).toMatchObject({
      key: 'corruption:main',
      severity: 'critical',
      summary: expect.stringMatching(/^data corruption on main: corruption found in 2 relation/),
    });
  }, 60_000);
});
