// restore-partition on real parts, from archives drop-expired-partitions made: the rows
// of each period come back equal, row for row, to what was dropped (from local storage,
// and from an S3 bucket, encrypted, the only copy); a partition attached under a hold is
// left alone by retention until the hold ends, then taken again; a worker SIGKILLed at
// each step (before pg_restore, after it, before the ATTACH) leaves nothing attached that
// is half-restored, and the next run finishes the restore.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DropExpiredPartitionsResult } from '../../jobs/drop-expired-partitions.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { createApp } from '../../src/http/app.ts';
import { Auth } from '../../src/http/auth.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { bucketConfig, bucketCredentials } from '../support/bucket.ts';
import {
  ADMIN_TOKEN,
  createHarness,
  type Harness,
  VIEWER_TOKEN,
  waitForFinished,
  waitUntil,
} from '../support/harness.ts';
import { holdableTool, holdDdl } from '../support/holds.ts';

let h: Harness;
let rt: Runtime;
let s3: S3Server;
let env: Record<string, string>;
let faultDir: string;
let faultBin: string;
const DROPPED_AT = '2025-06-15T00:00:00Z';
/** Each dropped partition's rows, as text in key order, and their count: taken before the drop. */
const dropped = new Map<string, { n: number; md5: string }>();

const policies = [
  { table: 'sales.sale_order', column: 'ts', interval: 'month', retention: '12 months', lockTimeout: '60s' },
  { table: 'sales.sale_line', column: 'ts', interval: 'month', retention: '12 months' },
];
const local = () => ({
  partitions: policies,
  worker: { stalledIntervalMs: 1000, lockDurationMs: 2000, shutdownTimeoutMs: 5000 },
});
const bucket = () => ({
  ...local(),
  objectStore: bucketConfig(s3),
  encryption: { keyId: 'k2026', keyEnv: 'TEST_BACKUP_KEY' },
  backups: { scratchDir: path.join(h.dir, 'scratch') },
});

async function useConfig(content: object) {
  await rt?.close();
  h.configFile(content);
  rt = h.runtime({ schedules: [], env });
  await rt.history.migrate();
}

async function run(name: string, payload: object) {
  const { job } = await rt.queues.enqueue(name, payload);
  return waitForFinished(rt.queues.get(name), job.id!, 120_000);
}

async function rowsOf(table: string, where = 'true') {
  const { rows } = await h.admin.query(
    `select count(*)::int n, coalesce(md5(string_agg(t::text, ',' order by t.ts, t.v)), '') md5 from ${table} t ` +
      `where ${where}`,
  );
  return rows[0] as { n: number; md5: string };
}

async function place(schema: string, name: string): Promise<'attached' | 'detached' | 'missing'> {
  const { rows } = await h.admin.query(
    `select i.inhrelid is not null as attached from pg_class c join pg_namespace n on n.oid = c.relnamespace left ` +
      `join pg_inherits i on i.inhrelid = c.oid where n.nspname = $1 and c.relname = $2`,
    [schema, name],
  );
  return rows[0] ? (rows[0].attached ? 'attached' : 'detached') : 'missing';
}

async function makeParent(parent: string, perMonth: number) {
  await h.admin.query(`create table ${parent} (ts timestamptz not null, v int, note text) partition by range (ts)`);
  for (let m = 1; m <= 7; m++) {
    const from = `2024-${String(m).padStart(2, '0')}-01`;
    const name = `${parent}_p2024${String(m).padStart(2, '0')}`;
    await h.admin.query(
      `create table ${name} partition of ${parent} for values from ('${from} 00:00+00') to ` +
        `('${from} 00:00+00'::timestamptz + interval '1 month')`,
    );
    await h.admin.query(
      `insert into ${parent} select '${from} 00:00+00'::timestamptz + make_interval(mins => g * 7), g, ` +
        `md5((g * ${m})::text) from generate_series(1, ${perMonth * m}) g`,
    );
    dropped.set(name, await rowsOf(name));
  }
}

beforeAll(async () => {
  h = await createHarness('restore_partition');
  s3 = await startS3(path.join(h.dir, 's3'));
  env = {
    ...bucketCredentials(s3),
    TEST_BACKUP_KEY: randomBytes(32).toString('base64'),
  };
  await h.admin.query('create schema sales');
  await makeParent('sales.sale_order', 40);
  await makeParent('sales.sale_line', 25);
  ({ bin: faultBin, faults: faultDir } = holdableTool(h.dir, 'pg_restore'));
  // "Before the ATTACH": a pgmaint session's ALTER TABLE waits here while the flag is on.
  await holdDdl(h.admin, 'sales', 'hold_alter', 'ALTER TABLE');
  await useConfig(local());
  startWorkers(rt, ['drop-expired-partitions', 'restore-partition']);
  const r = await run('drop-expired-partitions', { now: DROPPED_AT, tables: ['sales.sale_order'] });
  expect(r.state, r.job.failedReason).toBe('completed');
  expect(await place('sales', 'sale_order_p202403')).toBe('missing');
}, 120_000);
afterAll(async () => {
  await h.admin.query('drop event trigger if exists hold_alter').catch(() => undefined);
  await rt?.close();
  await h.close();
  await s3?.stop();
});
afterEach(async () => {
  for (const f of fs.readdirSync(faultDir)) fs.rmSync(path.join(faultDir, f));
  await h.admin.query('truncate sales.hold_alter');
});

describe('restore-partition from local storage', () => {
  it('standalone: the period comes back as sales.sale_order_p202403_restored, row for row as dropped', async () => {
    const r = await run('restore-partition', { partition: 'sales.sale_order_p202403', mode: 'standalone' });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(r.job.returnvalue).toMatchObject({ table: 'sales.sale_order_p202403_restored', rows: 120 });
    expect(await rowsOf('sales.sale_order_p202403_restored')).toEqual(dropped.get('sales.sale_order_p202403'));
    expect(await place('sales', 'sale_order_p202403_restored')).toBe('detached');
    expect(await place('sales', 'sale_order_p202403')).toBe('missing');
  });

  it('attach by parent and period under a hold: retention leaves it until the hold ends, then takes it', async () => {
    const r = await run('restore-partition', {
      parent: 'sales.sale_order',
      period: '2024-02',
      mode: 'attach',
      holdUntil: '2099-01-01T00:00:00Z',
    });
    expect(r.state, r.job.failedReason).toBe('completed');
    expect(await place('sales', 'sale_order_p202402')).toBe('attached');
    const feb = `ts >= '2024-02-01 00:00+00' and ts < '2024-03-01 00:00+00'`;
    expect(await rowsOf('sales.sale_order', feb)).toEqual(dropped.get('sales.sale_order_p202402'));
    // The nightly retention run: the partition is expired, but held.
    const kept = await run('drop-expired-partitions', { now: DROPPED_AT, tables: ['sales.sale_order'] });
    expect(kept.state, kept.job.failedReason).toBe('completed');
    expect(await place('sales', 'sale_order_p202402')).toBe('attached');
    expect(JSON.stringify(kept.job.returnvalue)).toContain('held until 2099-01-01T00:00:00.000Z (restore-partition)');
    // Once the hold has ended, retention archives and drops it again.
    const after = await run('drop-expired-partitions', { now: '2099-02-01T00:00:00Z', tables: ['sales.sale_order'] });
    expect(after.state, after.job.failedReason).toBe('completed');
    expect(await place('sales', 'sale_order_p202402')).toBe('missing');
    expect((after.job.returnvalue as DropExpiredPartitionsResult).policies[0]!.dropped).toContain(
      'sales.sale_order_p202402',
    );
  });

  it(
    'refusals name the field: a partition that exists, an unknown archive, a period no archive holds, ' +
      'attach without a hold',
    async () => {
      const exists = await run('restore-partition', { partition: 'sales.sale_order_p202407', mode: 'standalone' });
      expect(exists.job.failedReason).toMatch(
        /^REFUSED: partition: (sales.sale_order_p202407 exists|no partition archive)/,
      );
      const archive = await run('restore-partition', {
        partition: 'sales.sale_order_p202401',
        archive: 'sales.sale_order-20200101T000000000Z.dump.zst',
        mode: 'standalone',
      });
      expect(archive.job.failedReason).toBe(
        'REFUSED: archive: no partition archive sales.sale_order-20200101T000000000Z.dump.zst of target "main"',
      );
      const period = await run('restore-partition', {
        parent: 'sales.sale_order',
        period: '2023-01',
        mode: 'standalone',
      });
      expect(period.job.failedReason).toMatch(
        /^REFUSED: period: no partition archive of target "main" holds sales.sale_order_p202301/,
      );
      const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
      const res = await request(app)
        .post('/api/jobs/restore-partition')
        .set({ Authorization: `Bearer ${ADMIN_TOKEN}` })
        .send({ partition: 'sales.sale_order_p202401', mode: 'attach' })
        .expect(400);
      expect(JSON.stringify(res.body)).toContain('holdUntil');
    },
  );
});

/** Kills a restore worker at a step; nothing half-restored is attached; a clean worker finishes the same job. */
async function killAt(name: string, hold: () => Promise<void>, journaled: string) {
  const doomed = h.spawnPgmaint(['worker', '--queues', 'restore-partition'], { ...env, PG_BINDIR: faultBin });
  await doomed.waitFor(/worker started/);
  const { job } = await rt.queues.enqueue('restore-partition', {
    partition: `sales.${name}`,
    mode: 'attach',
    holdUntil: '2099-01-01T00:00:00Z',
  });
  await hold();
  await doomed.killGroup();
  await h.admin.query(
    `select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and ` +
      `(application_name like 'pgmaint/restore-partition%' or ` +
      `(application_name like 'pgmaint%' and wait_event = 'PgSleep'))`,
  );
  await h.admin.query('truncate sales.hold_alter');
  expect(await place('sales', name)).not.toBe('attached');
  const { rows } = await h.admin.query(
    'select state from pgmaint.restore_journal where partition_name = $1 order by id',
    [name],
  );
  expect(rows.map((r) => r.state)).toEqual([journaled]);
  const rescuer = h.spawnPgmaint(['worker', '--queues', 'restore-partition'], env);
  await rescuer.waitFor(/worker started/);
  const done = await waitForFinished(rt.queues.get('restore-partition'), job.id!, 90_000);
  expect(done.state, done.job.failedReason).toBe('completed');
  expect(await place('sales', name)).toBe('attached');
  expect(await rowsOf(`sales.${name}`)).toEqual(dropped.get(`sales.${name}`));
  const after = await h.admin.query('select state from pgmaint.restore_journal where partition_name = $1', [name]);
  expect(after.rows.map((r) => r.state)).toEqual(['done']);
  await rescuer.killGroup();
}

const reached = () =>
  waitUntil(async () => fs.existsSync(path.join(faultDir, 'reached')), 30_000, 'the step').then(() => undefined);

describe('restore-partition killed at every step', () => {
  // Only the spawned workers run restores here.
  beforeAll(() => useConfig(local()));
  afterEach(() => h.killChildren());

  it('before pg_restore runs', async () => {
    fs.writeFileSync(path.join(faultDir, 'hold-before'), '');
    await killAt('sale_order_p202401', reached, 'restoring');
  }, 150_000);

  it('after pg_restore committed the table, before its rows are counted', async () => {
    fs.writeFileSync(path.join(faultDir, 'hold-after'), '');
    await killAt(
      'sale_order_p202404',
      async () => {
        await reached();
        expect(await place('sales', 'sale_order_p202404')).toBe('detached');
      },
      'restoring',
    );
  }, 150_000);

  it('after the count, before the ATTACH', async () => {
    await h.admin.query('insert into sales.hold_alter values (true)');
    await killAt(
      'sale_order_p202405',
      () =>
        waitUntil(
          async () =>
            (
              await h.admin.query(
                `select 1 from pg_stat_activity where datname = current_database() and ` +
                  `application_name like 'pgmaint%' and wait_event = 'PgSleep'`,
              )
            ).rowCount,
          30_000,
          'the ATTACH to be held',
        ).then(() => undefined),
      'restored',
    );
  }, 150_000);
});

describe('restore-partition from the bucket, encrypted (the only copy)', () => {
  it('archives and manifests go to the bucket; with the local ones gone the period restores row for row', async () => {
    await useConfig(bucket());
    startWorkers(rt, ['drop-expired-partitions', 'restore-partition']);
    const r = await run('drop-expired-partitions', { now: DROPPED_AT, tables: ['sales.sale_line'] });
    expect(r.state, r.job.failedReason).toBe('completed');
    // The host is lost: nothing local remains of these archives.
    const dir = path.join(h.backupDir, 'partitions', 'main');
    for (const f of fs.readdirSync(dir)) if (f.startsWith('sales.sale_line-')) fs.rmSync(path.join(dir, f));
    const app = createApp(rt, new Auth(ADMIN_TOKEN, VIEWER_TOKEN));
    const listed = await request(app)
      .get('/api/backups')
      .set({ Authorization: `Bearer ${VIEWER_TOKEN}` })
      .expect(200);
    const archive = listed.body.partitionArchives.find((a: { parent: string }) => a.parent === 'sales.sale_line');
    expect(archive).toMatchObject({ location: 'bucket', encrypted: true });
    expect(archive.where[0]).toMatch(
      /^s3:\/\/pgmaint\/pgmaint\/partitions\/main\/sales\.sale_line-.*\.dump\.zst\.enc$/,
    );
    expect(archive.partitions).toContainEqual({
      partition: 'sales.sale_line_p202403',
      rows: 75,
      from: expect.stringMatching(/^'2024-03-01/),
      to: expect.stringMatching(/^'2024-04-01/),
    });
    const restored = await run('restore-partition', { partition: 'sales.sale_line_p202403', mode: 'standalone' });
    expect(restored.state, restored.job.failedReason).toBe('completed');
    expect(await rowsOf('sales.sale_line_p202403_restored')).toEqual(dropped.get('sales.sale_line_p202403'));
    const { logs } = await rt.queues.get('restore-partition').getJobLogs(restored.job.id!);
    expect(logs.join('\n')).toContain('decrypting as it streams');
    // And attached, from the bucket, under a hold.
    const attached = await run('restore-partition', {
      partition: 'sales.sale_line_p202401',
      mode: 'attach',
      holdUntil: '2099-01-01T00:00:00Z',
    });
    expect(attached.state, attached.job.failedReason).toBe('completed');
    expect(await place('sales', 'sale_line_p202401')).toBe('attached');
    expect(await rowsOf('sales.sale_line_p202401')).toEqual(dropped.get('sales.sale_line_p202401'));
  }, 180_000);
});
