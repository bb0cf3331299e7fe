// integrity-check on real PostgreSQL with amcheck: a clean database passes and is not
// read again until written; a damaged heap page and a damaged index page fail the job,
// naming relation and block, and raise the critical corruption alert; so does a page that
// cannot be read at all (a garbled header, a checksum failure), and the check goes on.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IntegrityCheckResult } from '../../jobs/integrity-check.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { PostgresInstance } from '../../src/dev/devstack.ts';
import { judge } from '../../src/monitoring/alerts.ts';
import { HealthReader } from '../../src/monitoring/health.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

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

interface Hit {
  block: number;
  /** Offset in the page: 7000 lands in tuple data, leaving the page header whole. */
  at: number;
  bytes?: Buffer;
}

/** Writes garbage over parts of blocks of a relation's file, with the server stopped (no cached copy). */
async function damage(on: { cluster: PostgresInstance; db: pg.Pool }, relation: string, ...hits: Hit[]) {
  const file = (await on.db.query(`select pg_relation_filepath($1) as f`, [relation])).rows[0].f as string;
  await on.db.query('checkpoint');
  await on.cluster.stop('fast');
  const fd = fs.openSync(path.join(on.cluster.dataDir, file), 'r+');
  for (const { block, at, bytes = Buffer.alloc(64, 0x5a) } of hits)
    fs.writeSync(fd, bytes, 0, bytes.length, block * 8192 + at);
  fs.closeSync(fd);
  await on.cluster.start();
}

const corruptionAlert = async (runtime: Runtime) => {
  await runtime.history.flush();
  return judge(await new HealthReader(runtime).read(), runtime.config.alerts).find((a) => a.rule === 'corruption');
};

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
    await damage({ cluster, db }, 'farm.milking', { block: 3, at: 7000 });
    await damage({ cluster, db }, 'farm.milking_animal', { block: 1, at: 4000 });
    const done = await run({ schemas: ['farm'], full: true });
    expect(done.state).toBe('failed');
    expect(done.job.attemptsMade).toBe(1);
    expect(done.job.failedReason).toMatch(/^CORRUPTION: corruption found in 2 relation\(s\): /);
    expect(done.job.failedReason).toMatch(/farm\.milking block 3: /);
    expect(done.job.failedReason).toMatch(/farm\.milking_animal( block 1)?: /);

    await rt.history.flush();
    const alerts = judge(await new HealthReader(rt).read(), rt.config.alerts);
    expect(alerts.find((a) => a.rule === 'corruption')).toMatchObject({
      key: 'corruption:main',
      severity: 'critical',
      summary: expect.stringMatching(/^data corruption on main: corruption found in 2 relation/),
    });
  }, 60_000);

  it('a page that cannot be read is a finding; the check goes on past it, and with the other tables', async () => {
    await db.query(`
      create schema yard;
      create table yard.pens (id int primary key, v text);
      insert into yard.pens select g, repeat('p', 100) from generate_series(1, 2000) g;
      create table yard.gates (id int primary key);
      insert into yard.gates values (1), (2);`);
    // As \`dd if=/dev/urandom bs=8192 seek=1 count=1 conv=notrunc\`: block 1 cannot be read; blocks 0
    // and 3 are damaged in their tuples only (headers included), which verify_heapam reports.
    await damage(
      { cluster, db },
      'yard.pens',
      { block: 0, at: 7000, bytes: Buffer.alloc(400, 0x5a) },
      { block: 1, at: 0, bytes: randomBytes(8192) },
      { block: 3, at: 7000, bytes: Buffer.alloc(400, 0x5a) },
    );
    const done = await run({ schemas: ['yard'], full: true });
    expect(done.state).toBe('failed');
    expect(done.job.attemptsMade).toBe(1);
    const reason = done.job.failedReason;
    expect(reason).toMatch(/^CORRUPTION: corruption found in 1 relation\(s\): /);
    expect(reason).toMatch(
      /yard\.pens block 1: invalid page in block 1 of relation base\/\d+\/\d+ \(SQLSTATE XX001\)(;|$)/,
    );
    // Every finding is in the run's log (the reason shows the first five).
    const log = (await rt.queues.get('integrity-check').getJobLogs(done.job.id!)).logs.join('\n');
    expect(log).toMatch(/CORRUPTION in yard\.pens block 0: offset \d+: /); // before the unreadable page
    expect(log).toMatch(/CORRUPTION in yard\.pens block 1: invalid page in block 1 .*\(SQLSTATE XX001\)/);
    expect(log).toMatch(/CORRUPTION in yard\.pens block 3: offset \d+: /); // after it
    // The clean table, checked after the damaged one (smaller), is recorded as checked.
    const { rows } = await db.query(
      `select relation from pgmaint.integrity_checked where relation like 'yard.%' order by 1`,
    );
    expect(rows.map((r) => r.relation)).toEqual(['yard.gates']);
    expect(await corruptionAlert(rt)).toMatchObject({
      key: 'corruption:main',
      severity: 'critical',
      summary: expect.stringMatching(/^data corruption on main: corruption found in 1 relation\(s\): yard\.pens /),
    });
  }, 60_000);
});

describe('integrity-check on a cluster with data checksums', () => {
  let own: Harness;
  let ownRt: Runtime;
  let on: { cluster: PostgresInstance; db: pg.Pool };

  beforeAll(async () => {
    own = await createHarness('integrity_sums');
    const c = await own.ownCluster({ dataChecksums: true });
    on = { cluster: c.pg, db: c.pool };
    on.db.on('error', () => undefined);
    await on.db.query(`
      create extension amcheck;
      create schema pasture;
      create table pasture.grazing (id int primary key, v text);
      insert into pasture.grazing select g, repeat('g', 100) from generate_series(1, 2000) g;
      create table pasture.fence (id int primary key);
      insert into pasture.fence values (1);`);
    ownRt = own.runtime({ schedules: [] });
    await ownRt.history.migrate();
    startWorkers(ownRt, ['integrity-check']);
  }, 120_000);
  afterAll(() => own.close());

  it('a checksum failure is a finding naming table, block and checksums; the check goes on', async () => {
    expect((await on.db.query('show data_checksums')).rows[0].data_checksums).toBe('on');
    await damage(on, 'pasture.grazing', { block: 1, at: 7000 });
    const { job } = await ownRt.queues.enqueue('integrity-check', { schemas: ['pasture'], full: true });
    const done = await waitForFinished(ownRt.queues.get('integrity-check'), job.id!, 60_000);
    expect(done.state).toBe('failed');
    expect(done.job.failedReason).toMatch(
      new RegExp(
        '^CORRUPTION: corruption found in 1 relation\\(s\\): pasture\\.grazing block 1: ' +
          'invalid page in block 1 of relation ' +
          'base/\\d+/\\d+; page verification failed, calculated checksum \\d+ but expected \\d+ \\(SQLSTATE XX001\\)',
      ),
    );
    const { rows } = await on.db.query(`select relation from pgmaint.integrity_checked order by 1`);
    expect(rows.map((r) => r.relation)).toEqual(['pasture.fence']);
    expect(await corruptionAlert(ownRt)).toMatchObject({ key: 'corruption:main', severity: 'critical' });
  }, 60_000);
});
