// Inside a unit of a governed run (docs/governor.md#inside-a-unit): with the governor on, the
// work itself is gentler, and with it off (payload `governor: {enabled: false}`) it is not.
// What each session and child got is read where the server or the OS has it: the VACUUM's
// and the REINDEX's session settings as their session reads them, pg_repack's PGOPTIONS and
// every child's niceness as the child itself records them (wrappers of the tools, as in
// child-env.test.ts), and the archive's pg_dump read at streamMaxRate: the server's COPY
// waits in ClientWrite while the run is not held at all.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IndexMaintenanceResult } from '../../jobs/index-maintenance.ts';
import type { VacuumAnalyzeResult } from '../../jobs/vacuum-analyze.ts';

/** A run that did its work (not a dry run). */
type VacuumRun = Exclude<VacuumAnalyzeResult, { dryRun: boolean }>;
import { startWorkers } from '../../src/cli/roles.ts';
import { readGovernor } from '../../src/governor/board.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, type Harness, waitForFinished, waitUntil } from '../support/harness.ts';

const REAL_BINDIR = '/usr/lib/postgresql/15/bin';
const OFF = { enabled: false };
const NOW = '2026-01-10T00:00:00Z';

let h: Harness;
let rt: Runtime;
let records: string;
/** The worker's own niceness: children are started relative to it. */
let own: number;

/** Wrappers that record their niceness and PGOPTIONS, then exec the real tool. */
function wrappers(dir: string, tools: Record<string, string>): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, real] of Object.entries(tools))
    fs.writeFileSync(
      path.join(dir, name),
      `#!/bin/sh\nprintf '%s\\n%s\\n' "$(nice)" "$PGOPTIONS" > "${records}/${name}.$$"\nexec "${real}" "$@"\n`,
      { mode: 0o755 },
    );
}

/** What the tools recorded since the last call (each run's own), then forgotten. */
function recorded(): { tool: string; nice: number; pgoptions: string }[] {
  const out = fs.readdirSync(records).map((f) => {
    const [nice, pgoptions] = fs.readFileSync(path.join(records, f), 'utf8').split('\n');
    fs.rmSync(path.join(records, f));
    return { tool: f.split('.')[0]!, nice: Number(nice), pgoptions: pgoptions ?? '' };
  });
  return out.sort((a, b) => a.tool.localeCompare(b.tool));
}

/** Two daily partitions, the older one with rows: it is expired (the newest never is). */
async function partitioned(schema: string, rows: number): Promise<void> {
  await h.admin.query(`create schema ${schema};
    create table ${schema}.days (ts timestamptz not null, v text) partition by range (ts);
    create table ${schema}.days_p20260101 partition of ${schema}.days
      for values from ('2026-01-01 00:00+00') to ('2026-01-02 00:00+00');
    create table ${schema}.days_p20260102 partition of ${schema}.days
      for values from ('2026-01-02 00:00+00') to ('2026-01-03 00:00+00');
    insert into ${schema}.days select '2026-01-01 06:00+00'::timestamptz + g * interval '1 ms',
      repeat(md5(g::text), 3) from generate_series(1, ${rows}) g;`);
}

beforeAll(async () => {
  h = await createHarness('gov_gentle');
  await h.admin.query(`create extension if not exists pg_repack;
    create schema gentle;
    create table gentle.t (id int primary key, v text);
    insert into gentle.t select g, 'x' from generate_series(1, 6000) g;`);
  await partitioned('ret_on', 100);
  await partitioned('ret_off', 100);
  // About 18 MB of COPY text: more than the pipe and socket buffers hold at the start of the dump.
  await partitioned('big', 150_000);
  records = path.join(h.dir, 'records');
  fs.mkdirSync(records);
  const binDir = path.join(h.dir, 'wrapped-bin');
  const pathDir = path.join(h.dir, 'wrapped-path');
  wrappers(binDir, Object.fromEntries(fs.readdirSync(REAL_BINDIR).map((t) => [t, path.join(REAL_BINDIR, t)])));
  wrappers(pathDir, { zstd: execFileSync('sh', ['-c', 'command -v zstd']).toString().trim() });
  Object.assign(process.env, { PG_BINDIR: binDir, PATH: `${pathDir}:${process.env.PATH}` });
  own = Number(execFileSync('nice').toString().trim());
  h.configFile({
    partitions: ['ret_on.days', 'ret_off.days', 'big.days'].map((table) => ({
      table,
      column: 'ts',
      interval: 'day',
      retention: '1 day',
    })),
    governor: { maxActive: null, maxLockWaits: null, maxReplicaLagSeconds: null },
    history: { synchronous: true },
    jobs: { 'drop-expired-partitions': { attempts: 1 } },
  });
  rt = h.runtime({ schedules: [], env: { PG_BINDIR: binDir } });
  await rt.history.migrate();
  startWorkers(rt, ['vacuum-analyze', 'index-maintenance', 'repack-table', 'drop-expired-partitions']);
}, 120_000);
afterAll(() => h.close());

async function run<T = Record<string, any>>(job: string, payload: object): Promise<T> {
  const { job: j } = await rt.queues.enqueue(job, payload);
  const { state, job: done } = await waitForFinished(rt.queues.get(job), j.id!, 120_000);
  expect(state, `${job}: ${done.failedReason}`).toBe('completed');
  return done.returnvalue as T;
}

/** vacuum-analyze chooses every table of the schema (to ANALYZE at least), whatever its statistics say. */
const everyTable = { schemas: ['gentle'], thresholds: { minModTuples: 0, modRatio: 0 } };
const serverSetting = async (name: string) =>
  (await h.admin.query(`select setting from pg_settings where name = $1`, [name])).rows[0].setting as string;

describe('governor: inside a unit', () => {
  it("vacuum-analyze's session: the governor's cost delay and limit where stricter, no parallel workers", async () => {
    const workers = Number(await serverSetting('max_parallel_maintenance_workers'));
    expect(workers).toBeGreaterThan(0);
    const off = await run<VacuumRun>('vacuum-analyze', { ...everyTable, governor: OFF });
    expect(off.tables.map((t) => t.table)).toEqual(['gentle.t']);
    // The job's own throttle (autovacuum's 2 ms) and the server's limit and workers.
    expect(off.throttle).toEqual({ costDelay: '2ms', costLimit: 200, maxParallelMaintenanceWorkers: workers });
    const on = await run<VacuumRun>('vacuum-analyze', everyTable);
    expect(on.tables.map((t) => t.table)).toEqual(['gentle.t']);
    expect(on.throttle).toEqual({ costDelay: '10ms', costLimit: 200, maxParallelMaintenanceWorkers: 0 });
    const strict = await run<VacuumRun>('vacuum-analyze', {
      ...everyTable,
      costDelayMs: 30,
      governor: { vacuumCostDelayMs: 20, vacuumCostLimit: 150, maxParallelMaintenanceWorkers: 1 },
    });
    // The payload's delay is the longer one and stays; the governor's limit is the lower one.
    expect(strict.throttle).toEqual({ costDelay: '30ms', costLimit: 150, maxParallelMaintenanceWorkers: 1 });
  });

  it("index-maintenance's rebuild session takes no parallel workers while governed", async () => {
    const workers = Number(await serverSetting('max_parallel_maintenance_workers'));
    const payload = { indexes: ['gentle.t_pkey'] };
    const off = await run<IndexMaintenanceResult>('index-maintenance', { ...payload, governor: OFF });
    expect(off.rebuilt.map((r) => r.index)).toEqual(['gentle.t_pkey']);
    expect(off.maxParallelMaintenanceWorkers).toBe(workers);
    const on = await run<IndexMaintenanceResult>('index-maintenance', payload);
    expect(on.rebuilt.map((r) => r.index)).toEqual(['gentle.t_pkey']);
    expect(on.maxParallelMaintenanceWorkers).toBe(0);
  });

  it("pg_repack gets the build and ANALYZE settings in PGOPTIONS and childNice's priority while governed", async () => {
    recorded();
    expect((await run('repack-table', { tables: ['gentle.t'], governor: OFF })).repacked).toHaveLength(1);
    const off = recorded().filter((r) => r.tool === 'pg_repack');
    // Its --version, then the repack itself.
    expect(off.length).toBeGreaterThan(0);
    for (const r of off) expect(r).toEqual({ tool: 'pg_repack', nice: own, pgoptions: '' });
    expect((await run('repack-table', { tables: ['gentle.t'] })).repacked).toHaveLength(1);
    // Its --version (no connection) as before; the repack itself governed.
    expect(recorded().filter((r) => r.tool === 'pg_repack')).toEqual(
      expect.arrayContaining([
        { tool: 'pg_repack', nice: own, pgoptions: '' },
        {
          tool: 'pg_repack',
          nice: own + 10,
          pgoptions: '-c max_parallel_maintenance_workers=0 -c vacuum_cost_delay=10',
        },
      ]),
    );
  });

  it("the archive's pg_dump, zstd and pg_restore start at childNice while governed, at ours while not", async () => {
    recorded();
    await run('drop-expired-partitions', { tables: ['ret_off.days'], now: NOW, governor: OFF });
    const tools = ['pg_dump', 'pg_restore', 'zstd', 'zstd'];
    const off = recorded();
    expect(off.map((r) => [r.tool, r.nice])).toEqual(tools.map((t) => [t, own]));
    await run('drop-expired-partitions', { tables: ['ret_on.days'], now: NOW, governor: { childNice: 15 } });
    const on = recorded();
    expect(on.map((r) => [r.tool, r.nice])).toEqual(tools.map((t) => [t, own + 15]));
  });

  it("a governed archive's pg_dump is read at streamMaxRate: the server's COPY waits in ClientWrite", async () => {
    const { job } = await rt.queues.enqueue('drop-expired-partitions', {
      tables: ['big.days'],
      now: NOW,
      governor: { streamMaxRate: '512k' },
    });
    const copy = await waitUntil(
      async () =>
        (
          await h.admin.query(
            `select pid from pg_stat_activity where query ilike 'COPY %days_p20260101%' and wait_event = 'ClientWrite'`,
          )
        ).rows[0] as { pid: number } | undefined,
      60_000,
      "the server's COPY to wait in ClientWrite",
    );
    // Not held: no signal is over its limit and no hold is in force; the run is only read slower.
    expect((await readGovernor(rt.queues.connection, rt.config.redis.prefix)).held).toEqual([]);
    // Ended here (a dump of 18 MB at 512 kB/s would take half a minute): the run fails, nothing dropped.
    await h.admin.query('select pg_terminate_backend($1)', [copy.pid]);
    const { state, job: done } = await waitForFinished(rt.queues.get('drop-expired-partitions'), job.id!, 60_000);
    expect(state).toBe('failed');
    expect(done.failedReason).toMatch(/pg_dump/);
    expect((await h.admin.query(`select to_regclass('big.days_p20260101') as t`)).rows[0].t).not.toBeNull();
  });
});
