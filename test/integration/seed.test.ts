// The dairy seed is all or nothing: `pgmaint seed` killed (SIGKILL) in the middle leaves
// no rows, and the next seed fills every table; a database an older pgmaint seeded halfway
// is refused, naming the fix, or (the demo's own) emptied and seeded again.
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DAIRY_SCHEMA, SCALES, seedDairy } from '../../src/dev/dairy.ts';
import { createHarness, type Harness, waitUntilBlocked } from '../support/harness.ts';

let h: Harness;

beforeAll(async () => {
  h = await createHarness('seed');
});
afterAll(() => h.close());
afterEach(() => h.killChildren());

const small = SCALES.small;
/** The advisory lock the test holds to stop a seed at its POS lines. */
const HOLD = 424242;

async function counts(): Promise<Record<string, number>> {
  const { rows } = await h.admin.query<Record<string, number>>(
    `select (select count(*)::int from catalog.product_template) as products,
            (select count(*)::int from farm.milk_production) as milk,
            (select count(*)::int from sales.sale_order) as orders,
            (select count(*)::int from sales.sale_order_line) as lines,
            (select count(*)::int from sales.pos_order_line) as pos,
            (select count(*)::int from iot.sensor_reading) as readings`,
  );
  return rows[0]!;
}

function expectComplete(c: Record<string, number>): void {
  expect(c).toMatchObject({ products: 200, orders: small.orders, pos: small.posLines });
  expect(c.milk).toBeGreaterThan(0);
  // One to seven lines an order.
  expect(c.lines).toBeGreaterThanOrEqual(small.orders);
  expect(c.readings).toBeGreaterThanOrEqual(small.sensors * small.iotDays);
}

describe('pgmaint seed', () => {
  it('killed midway (after the orders, before the POS lines) leaves no rows; the next seed fills all', async () => {
    // The schema first, with a trigger that holds the POS lines' insert while this test holds a lock:
    // the seed stops there, past its catalog, herd and orders.
    await h.admin.query(DAIRY_SCHEMA);
    await h.admin.query(`create function public.hold_seed() returns trigger language plpgsql as
        $$ begin perform pg_advisory_xact_lock(${HOLD}); return null; end $$;
      create trigger hold_seed before insert on sales.pos_order_line
        for each statement execute function public.hold_seed()`);
    const holder = new pg.Client({ connectionString: h.dbUrl });
    await holder.connect();
    let seed: ReturnType<Harness['spawnPgmaint']> | undefined;
    try {
      await holder.query(`select pg_advisory_lock(${HOLD})`);
      seed = h.spawnPgmaint(['seed', '--scale', 'small']);
      await seed.waitFor(/^sales\.sale_order: \d+ rows/m);
      await waitUntilBlocked(h.admin, `query like 'insert into sales.pos_order_line%'`, 'the seed at the POS lines');
      await seed.killGroup();
    } finally {
      await holder.end();
    }
    expect(seed!.output()).toMatch(/^sales\.sale_order_line: \d+ rows/m);
    // Nothing of the stopped seed stayed: no catalog that would make the next seed skip the rest.
    expect(await counts()).toEqual({ products: 0, milk: 0, orders: 0, lines: 0, pos: 0, readings: 0 });

    const again = h.spawnPgmaint(['seed', '--scale', 'small']);
    expect(await again.exited, again.output()).toBe(0);
    expectComplete(await counts());
  });

  it('a database seeded halfway before is refused (exit 2, naming the fix); the demo seeds its own again', async () => {
    // What an older pgmaint left when killed after its first steps: the catalog and orders, nothing else.
    await h.admin.query(`truncate sales.sale_order_line, sales.pos_order_line, iot.sensor_reading`);
    const seed = h.spawnPgmaint(['seed', '--scale', 'small']);
    expect(await seed.exited, seed.output()).toBe(2);
    const db = `t_${h.id}`;
    expect(seed.output()).toContain(`pgmaint: DATABASE_URL: the database ${db} at postgres://`);
    expect(seed.output()).toMatch(
      new RegExp(
        'was seeded halfway \\(an earlier seed was stopped\\): catalog\\.product_template has rows, ' +
          'sales\\.sale_order_line, sales\\.pos_order_line, iot\\.sensor_reading have none; re-create it and seed ' +
          `again \\(dropdb ${db} && createdb ${db} && pgmaint seed\\)`,
      ),
    );
    expect((await counts()).pos).toBe(0);

    const lines: string[] = [];
    const seeded = await seedDairy(h.dbUrl, 'small', { reseedIncomplete: true, log: (m) => lines.push(m) });
    expect(lines[0]).toMatch(/^the database was seeded halfway \(.*\): emptying the dairy tables, seeding again$/);
    expect(seeded['sales.pos_order_line']).toBe(small.posLines);
    expectComplete(await counts());
    // Complete now: a further seed leaves it alone.
    expect(await seedDairy(h.dbUrl, 'small', { reseedIncomplete: true })).toEqual({});
  });
});
