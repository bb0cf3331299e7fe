// JobContext.withClient (src/core/sql.ts): the one way a job borrows a session of its
// target's pool. Whatever fn does, the session goes back clean (its reset ran) or is closed;
// a session killed while checked out neither crashes the process nor returns to the pool.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../src/core/sql.ts';
import { createHarness, type Harness } from '../support/harness.ts';

let h: Harness;
let pool: pg.Pool;

beforeAll(async () => {
  h = await createHarness('with_client');
  pool = new pg.Pool({ connectionString: h.dbUrl, max: 1 });
});
afterAll(async () => {
  await pool.end();
  await h.close();
});

const setting = async (name: string) =>
  (await pool.query<{ v: string }>('select current_setting($1) as v', [name])).rows[0]!.v;

describe('withClient', () => {
  it("returns fn's value and gives the session back with what fn set undone by the reset", async () => {
    const before = await setting('statement_timeout');
    const out = await withClient(
      pool,
      async (c) => {
        await c.query(`set statement_timeout = '5min'`);
        return 42;
      },
      { reset: 'reset statement_timeout' },
    );
    expect(out).toBe(42);
    // max: 1, so this is the same session.
    expect(await setting('statement_timeout')).toBe(before);
  });

  it("rethrows fn's error, not the reset's, and closes a session whose reset failed", async () => {
    const pid = (await pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    await expect(
      withClient(
        pool,
        async () => {
          throw new Error('what fn says');
        },
        { reset: 'select no_such_function()' },
      ),
    ).rejects.toThrow('what fn says');
    const after = (await pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    expect(after).not.toBe(pid);
  });

  it('a session terminated while checked out is closed, not pooled, and its error ends nothing', async () => {
    const pid = await withClient(pool, async (c) => {
      const own = (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      // Not events.once: that rejects on the 'error' event, which is what withClient must swallow.
      const ended = new Promise((resolve) => c.once('end', resolve));
      await h.admin.query('select pg_terminate_backend($1)', [own]);
      // Idle between queries, the client learns of it as an 'error' event: unheard, it would end the process.
      await ended;
      return own;
    });
    const after = (await pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    expect(after).not.toBe(pid);
  });
});
