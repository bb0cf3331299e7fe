import { DateTime } from 'luxon';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatePartitionsResult, PolicyResult } from '../../jobs/create-partitions.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;

const policies = [
  { table: 'sales.sale_order', column: 'date_order', interval: 'month', premake: 3, timeZone: 'Asia/Dhaka' },
  { table: 'iot.sensor_reading', column: 'read_at', interval: 'day', premake: 7 },
  { table: 'ops.hourly_london', column: 'ts', interval: 'hour', premake: 4, timeZone: 'Europe/London' },
  { table: 'ops.daily_ny', column: 'ts', interval: 'day', premake: 4, timeZone: 'America/New_York' },
  { table: 'ops.outage', column: 'ts', interval: 'month', premake: 2 },
  { table: 'ops.stranded', column: 'ts', interval: 'day', premake: 2 },
  { table: 'ops.strict', column: 'ts', interval: 'day', premake: 2, defaultRows: 'fail' },
  { table: 'ops.missing', column: 'ts', interval: 'day' },
  { table: 'ops.notpartitioned', column: 'ts', interval: 'day' },
  { table: 'ops.busy', column: 'ts', interval: 'day', premake: 2, lockTimeout: '1s' },
  { table: 'ops.clash', column: 'ts', interval: 'day', premake: 3 },
];

beforeAll(async () => {
  h = await createHarness('partitions');
  h.configFile({ partitions: policies });
  await h.admin.query(`
    create schema sales; create schema iot; create schema ops;
    create role partition_reader nologin;
    create table sales.sale_order (id bigint generated always as identity, date_order timestamptz not null, amount
      numeric, primary key (id, date_order)) partition by range (date_order);
    grant select on sales.sale_order to partition_reader;
    create table iot.sensor_reading (sensor_id int, read_at timestamptz not null, value double precision)
      partition by range (read_at);
    create index on iot.sensor_reading (sensor_id, read_at);
    create table ops.hourly_london (ts timestamptz not null, v int) partition by range (ts);
    create table ops.daily_ny (ts timestamptz not null, v int) partition by range (ts);
    create table ops.outage (ts timestamptz not null, v int) partition by range (ts);
    create table ops.stranded (ts timestamptz not null, v int) partition by range (ts);
    create table ops.stranded_default partition of ops.stranded default;
    create table ops.strict (ts timestamptz not null, v int) partition by range (ts);
    create table ops.strict_default partition of ops.strict default;
    create table ops.notpartitioned (ts timestamptz);
    create table ops.busy (ts timestamptz not null, v int) partition by range (ts);
    create table ops.clash (ts timestamptz not null, v int) partition by range (ts);
    create table ops.clash_p20260503 (ts timestamptz not null, v int);
  `);
  rt = h.runtime({ schedules: [] });
  startWorkers(rt, ['create-partitions']);
});
afterAll(() => h.close());

async function run(payload: object) {
  const { job } = await rt.queues.enqueue('create-partitions', payload);
  const done = await waitForFinished(rt.queues.get('create-partitions'), job.id!);
  return done;
}

async function bounds(table: string): Promise<{ name: string; from: string; to: string }[]> {
  const { rows } = await h.admin.query(
    `select c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bound
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
      where i.inhparent = $1::regclass and pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'`,
    [table],
  );
  return rows
    .map((r) => {
      const m = /FROM \('(.+)'\) TO \('(.+)'\)/.exec(r.bound)!;
      return { name: r.name, from: new Date(m[1]!).toISOString(), to: new Date(m[2]!).toISOString() };
    })
    .sort((a, b) => a.from.localeCompare(b.from));
}

function expectContiguous(b: { from: string; to: string }[]) {
  for (let i = 1; i < b.length; i++) expect(b[i]!.from, `partition ${i}`).toBe(b[i - 1]!.to);
}

function resultFor(job: { returnvalue: unknown }, table: string): PolicyResult {
  return (job.returnvalue as CreatePartitionsResult).policies.find((p) => p.table === table)!;
}

describe('create-partitions', () => {
  it(
    'keeps a runway from the clock with no data, carries grants and indexes, and a second run is a ' + 'no-op',
    async () => {
      const { state, job } = await run({ tables: ['sales.sale_order', 'iot.sensor_reading'] });
      expect(state).toBe('completed');
      const orders = await bounds('sales.sale_order');
      expect(orders).toHaveLength(4); // current month + 3
      expectContiguous(orders);
      const monthStart = DateTime.now().setZone('Asia/Dhaka').startOf('month');
      expect(orders[0]!.from).toBe(monthStart.toUTC().toISO());
      expect(resultFor(job, 'sales.sale_order')).toMatchObject({ periodsAhead: 3, defaultRows: null, rowsMoved: 0 });
      const readings = await bounds('iot.sensor_reading');
      expect(readings).toHaveLength(8);
      expectContiguous(readings);
      // Grants and indexes of the parent are on the partitions.
      const grant = await h.admin.query(`select has_table_privilege('partition_reader', $1, 'select') as ok`, [
        `sales.${orders[1]!.name}`,
      ]);
      expect(grant.rows[0].ok).toBe(true);
      const idx = await h.admin.query(
        `select count(*)::int as n from pg_indexes where schemaname = 'iot' and tablename = $1`,
        [readings[0]!.name],
      );
      expect(idx.rows[0].n).toBe(1);
      // Inserting through the parent still uses the parent's identity.
      await h.admin.query(`insert into sales.sale_order (date_order, amount) values (now(), 10), (now(), 20)`);
      expect((await h.admin.query(`select max(id)::int as m from sales.sale_order`)).rows[0].m).toBe(2);

      const again = await run({ tables: ['sales.sale_order', 'iot.sensor_reading'] });
      expect(resultFor(again.job, 'sales.sale_order').created).toEqual([]);
      expect(resultFor(again.job, 'iot.sensor_reading').created).toEqual([]);
      expect(await bounds('sales.sale_order')).toEqual(orders);
    },
  );

  it('a steady-state run answers from one catalog reading; a bound changed between runs is seen', async () => {
    const first = await run({ tables: ['iot.sensor_reading'] });
    const steady = await run({ tables: ['iot.sensor_reading'] });
    const before = resultFor(first.job, 'iot.sensor_reading');
    expect(resultFor(steady.job, 'iot.sensor_reading')).toEqual({ ...before, created: [] });
    expect(before).toMatchObject({ periodsAhead: 7, skipped: [] });
    expect(steady.job.returnvalue).toBeDefined();
    // The newest partition is re-attached an hour short: the same process's next run must
    // read the new bound (not one it deparsed before) and report the uncovered hour.
    const newest = (await bounds('iot.sensor_reading')).at(-1)!;
    const shortTo = DateTime.fromISO(newest.to).minus({ hours: 1 }).toUTC().toISO();
    await h.admin.query(
      `alter table iot.sensor_reading detach partition iot.${newest.name};
       alter table iot.sensor_reading attach partition iot.${newest.name} for values from ('${newest.from}') to ` +
        `('${shortTo}')`,
    );
    const changed = resultFor((await run({ tables: ['iot.sensor_reading'] })).job, 'iot.sensor_reading');
    expect(changed.created).toEqual([]);
    expect(changed.skipped).toEqual([
      { range: expect.stringContaining(newest.from.slice(0, 10)), reason: expect.stringMatching(/partly covered/) },
    ]);
    expect(changed.runwayUntil).toBe(DateTime.fromISO(shortTo!).toUTC().toISO());
    await h.admin.query(
      `alter table iot.sensor_reading detach partition iot.${newest.name};
       alter table iot.sensor_reading attach partition iot.${newest.name} for values from ('${newest.from}') to ` +
        `('${newest.to}')`,
    );
    expect(resultFor((await run({ tables: ['iot.sensor_reading'] })).job, 'iot.sensor_reading')).toEqual({
      ...before,
      created: [],
    });
  });

  it('keeps boundaries contiguous across DST: hourly in Europe/London, daily in America/New_York', async () => {
    const london = await run({ tables: ['ops.hourly_london'], now: '2026-10-25T00:30:00+01:00' });
    expect(london.state).toBe('completed');
    const hours = await bounds('ops.hourly_london');
    expectContiguous(hours);
    // 00:00 BST, 01:00 BST, 01:00 GMT, 02:00 GMT, 03:00 GMT: five one-hour partitions.
    expect(hours.map((x) => x.from)).toEqual([
      '2026-10-24T23:00:00.000Z',
      '2026-10-25T00:00:00.000Z',
      '2026-10-25T01:00:00.000Z',
      '2026-10-25T02:00:00.000Z',
      '2026-10-25T03:00:00.000Z',
    ]);

    await run({ tables: ['ops.daily_ny'], now: '2026-03-07T12:00:00-05:00' });
    const days = await bounds('ops.daily_ny');
    expectContiguous(days);
    // Local midnights: the spring-forward day is 23 hours long.
    expect(days.map((d) => d.from).slice(0, 3)).toEqual([
      '2026-03-07T05:00:00.000Z',
      '2026-03-08T05:00:00.000Z',
      '2026-03-09T04:00:00.000Z',
    ]);
  });

  it('catches up after an outage of several periods in one run', async () => {
    await h.admin.query(
      `create table ops.outage_p202601 partition of ops.outage for values from ('2026-01-01 00:00+00') to ` +
        `('2026-02-01 00:00+00')`,
    );
    const { job } = await run({ tables: ['ops.outage'], now: '2026-06-15T00:00:00Z' });
    const b = await bounds('ops.outage');
    expectContiguous(b);
    expect(b[0]!.from).toBe('2026-01-01T00:00:00.000Z');
    expect(b.at(-1)!.to).toBe('2026-09-01T00:00:00.000Z'); // June + 2 ahead
    expect(resultFor(job, 'ops.outage').created).toHaveLength(7); // Feb … Aug
  });

  it('moves rows stranded in the DEFAULT partition into the new partition, none lost or doubled', async () => {
    await h.admin.query(
      `insert into ops.stranded select '2026-05-02 10:00+00'::timestamptz + make_interval(mins => g), g from ` +
        `generate_series(1, 500) g`,
    );
    // Years before the runway.
    await h.admin.query(`insert into ops.stranded select '2020-01-01 00:00+00', g from generate_series(1, 7) g`);
    const before = (await h.admin.query(`select count(*)::int n, sum(v)::int s from ops.stranded`)).rows[0];
    const { job, state } = await run({ tables: ['ops.stranded'], now: '2026-05-02T00:00:00Z' });
    expect(state).toBe('completed');
    const r = resultFor(job, 'ops.stranded');
    // The 2020 rows get a partition of their own period: nothing is left behind.
    expect(r.rowsMoved).toBe(507);
    expect(r.defaultRows).toBe(0);
    expect(r.created.find((c) => c.name === 'ops.stranded_p20200101')?.movedRows).toBe(7);
    expect(r.created.find((c) => c.name === 'ops.stranded_p20260502')?.movedRows).toBe(500);
    expect((await h.admin.query(`select count(*)::int n, sum(v)::int s from ops.stranded`)).rows[0]).toEqual(before);
    expect((await h.admin.query(`select count(*)::int n from ops.stranded_p20260502`)).rows[0].n).toBe(500);
  });

  it(
    'with defaultRows "fail", fails the policy naming the count and moves nothing, while other policies go ' + 'on',
    async () => {
      await h.admin.query(`insert into ops.strict values ('2026-05-02 10:00+00', 1), ('2026-05-02 11:00+00', 2)`);
      const { state, job } = await run({
        tables: ['ops.strict', 'ops.missing', 'ops.notpartitioned', 'iot.sensor_reading'],
        now: '2026-05-02T00:00:00Z',
      });
      expect(state).toBe('failed');
      expect(job.attemptsMade).toBe(1);
      expect(job.failedReason).toMatch(/ops\.strict \(2 rows of ops\.strict_default fall in/);
      expect(job.failedReason).toMatch(/ops\.missing \(ops\.missing: table does not exist\)/);
      expect(job.failedReason).toMatch(/ops\.notpartitioned \(ops\.notpartitioned: not RANGE-partitioned\)/);
      expect((await h.admin.query(`select count(*)::int n from ops.strict_default`)).rows[0].n).toBe(2);
      // The sound policy in the same run still got its partitions (back-filled to May).
      expect((await bounds('iot.sensor_reading'))[0]!.from).toBe('2026-05-02T00:00:00.000Z');
    },
  );

  it('a period whose name a plain table holds fails alone, named; the other periods get partitions', async () => {
    const { state, job } = await run({ tables: ['ops.clash'], now: '2026-05-02T00:00:00Z' });
    expect(state).toBe('failed');
    expect(job.failedReason).toMatch(/ops\.clash_p20260503 already exists and is not a partition of ops\.clash/);
    // The four periods commit together unless one fails; then each on its own.
    expect((await bounds('ops.clash')).map((b) => b.name)).toEqual([
      'clash_p20260502',
      'clash_p20260504',
      'clash_p20260505',
    ]);
  });

  it('never blocks a concurrent INSERT: it attaches while an insert transaction on the parent is open', async () => {
    await h.admin.query(
      `create table ops.busy_p20200101 partition of ops.busy for values from ('2020-01-01 00:00+00') to ` +
        `('2020-01-02 00:00+00')`,
    );
    const writer = await h.admin.connect();
    try {
      await writer.query('begin');
      await writer.query(`insert into ops.busy values ('2020-01-01 12:00+00', 1)`); // holds ROW EXCLUSIVE on the parent
      const { state, job } = await run({ tables: ['ops.busy'], now: '2020-01-01T00:00:00Z' });
      // CREATE TABLE … PARTITION OF would need ACCESS EXCLUSIVE and hit the 1 s lock_timeout.
      expect(state).toBe('completed');
      expect(resultFor(job, 'ops.busy').created.length).toBeGreaterThan(0);
      await writer.query(`insert into ops.busy values ('2020-01-02 12:00+00', 2)`); // lands in a new partition
      await writer.query('commit');
    } finally {
      writer.release();
    }
    expect((await h.admin.query(`select count(*)::int n from ops.busy_p20200102`)).rows[0].n).toBe(1);
  });

  it('skips a parent another run holds (advisory lock) and says so', async () => {
    const other = await h.admin.connect();
    try {
      await other.query(`select pg_advisory_lock(hashtext('pgmaint:partitions:ops.outage'))`);
      const { job } = await run({ tables: ['ops.outage'] });
      expect(resultFor(job, 'ops.outage').skipped).toEqual([
        { reason: expect.stringMatching(/another run holds this parent/) },
      ]);
    } finally {
      await other.query(`select pg_advisory_unlock_all()`);
      other.release();
    }
  });

  it('refuses odd table names in payloads before anything runs', async () => {
    await expect(rt.queues.enqueue('create-partitions', { tables: ['ops.x; drop table ops.busy'] })).rejects.toThrow(
      /tables\.0: must be schema\.table/,
    );
    await expect(rt.queues.enqueue('create-partitions', { tables: ['ops."busy"'] })).rejects.toThrow(/tables\.0/);
    await expect(rt.queues.enqueue('create-partitions', { now: 'yesterday' })).rejects.toThrow(/now/);
  });
});
