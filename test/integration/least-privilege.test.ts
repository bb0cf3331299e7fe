// The runner under a least-privilege role with exactly the grants docs/operations.md lists
// (the "Database grants" SQL there), not a superuser: the jobs it is granted for
// work, and one it is not granted for fails at once with PostgreSQL's own reason.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatePartitionsResult } from '../../jobs/create-partitions.ts';
import { listDumps } from '../../src/backup/catalog.ts';
import { seedDairy } from '../../src/dev/dairy.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { createHarness, waitForFinished, type Harness } from '../support/harness.ts';

let h: Harness;
let rt: Runtime;
let role: string;

beforeAll(async () => {
  h = await createHarness('least_priv');
  await seedDairy(h.dbUrl, 'small');
  role = `pgmaint_runner_${h.id}`.slice(0, 63);
  const owner = `dairy_owner_${h.id}`.slice(0, 63);
  const db = new URL(h.dbUrl).pathname.slice(1);
  // As docs/operations.md, "Database grants": one role owns the partitioned tables; the runner is a member.
  await h.admin.query(`
    create role "${owner}" nologin;
    alter table iot.sensor_reading owner to "${owner}";
    alter table sales.sale_order_line owner to "${owner}";
    create role "${role}" login;
    grant create on database "${db}" to "${role}";
    grant pg_read_all_data to "${role}";
    grant "${owner}" to "${role}";
    grant usage, create on schema iot, sales to "${role}", "${owner}";
    grant usage on schema analytics to "${role}";
    grant select, insert, update, delete on analytics.daily_sales_agg to "${role}";`);
  const url = new URL(h.dbUrl);
  url.username = role;
  h.configFile({
    partitions: [
      { table: 'iot.sensor_reading', column: 'read_at', interval: 'day', premake: 21 },
      // Owned by the superuser, not by the runner's group: the runner may not attach here.
      { table: 'sales.sale_order', column: 'date_order', interval: 'month', premake: 12 },
    ],
  });
  rt = h.runtime({ schedules: [], env: { DATABASE_URL: url.toString() } });
  startWorkers(rt, ['create-partitions', 'daily-sales-rollup', 'backup']);
});
afterAll(() => h.close());

const run = async (job: string, payload: object) => {
  const { job: j } = await rt.queues.enqueue(job, payload);
  return waitForFinished(rt.queues.get(job), j.id!, 60_000);
};

describe('the runner under a least-privilege role', () => {
  it('connects as that role, not as a superuser', async () => {
    const { rows } = await rt.connections
      .pool('main')
      .query(`select current_user as u, (select rolsuper from pg_roles where rolname = current_user) as s`);
    expect(rows[0]).toEqual({ u: role, s: false });
  });

  it(
    'creates partitions for the tables its group owns, and fails at once, with the reason, where it does ' + 'not',
    async () => {
      const { state, job } = await run('create-partitions', { tables: ['iot.sensor_reading'] });
      expect(job.failedReason ?? '').toBe('');
      expect(state).toBe('completed');
      expect((job.returnvalue as CreatePartitionsResult).policies[0]!.created.length).toBeGreaterThan(0);
      const denied = await run('create-partitions', { tables: ['sales.sale_order'] });
      expect(denied.state).toBe('failed');
      expect(denied.job.attemptsMade).toBe(1);
      expect(denied.job.failedReason).toMatch(
        /sales\.sale_order \((must be owner|must be member of role).*SQLSTATE 42501/,
      );
    },
  );

  it('runs the rollup and a verified backup with the listed grants', async () => {
    expect((await run('daily-sales-rollup', { from: '2026-10-01', to: '2026-10-31' })).state).toBe('completed');
    const { rows } = await h.admin.query('select count(*)::int as n from analytics.daily_sales_agg');
    expect(rows[0].n).toBeGreaterThan(0);
    const backup = await run('backup', {});
    expect(backup.state).toBe('completed');
    expect((await listDumps(h.backupDir, 'main')).dumps[0]!.manifest.verified).toBeTruthy();
  });
});
