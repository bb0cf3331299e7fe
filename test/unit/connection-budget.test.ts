// The connection budget of one process on one cluster (src/runner/connection-budget.ts),
// on its own: the line is served in order, an abandoned wait leaves it, and idle sessions
// are closed to make room for a waiter. The sessions it counts on a real cluster are
// measured in test/integration/fleet-connections.test.ts.
import { describe, expect, it } from 'vitest';
import { Budget, type IdleSessions } from '../../src/runner/connection-budget.ts';

describe('the budget of one cluster', () => {
  it('serves the line in order, gives up a wait on abort, closes idle sessions for a waiter', async () => {
    const budget = new Budget('sessions on test', 2);
    await budget.acquire();
    await budget.acquire();
    const order: string[] = [];
    const first = budget.acquire().then(() => order.push('first'));
    const abort = new AbortController();
    const abandoned = budget.acquire(abort.signal);
    const second = budget.acquire().then(() => order.push('second'));
    abort.abort(new Error('run aborted'));
    await expect(abandoned).rejects.toThrow('run aborted');
    // A pool with an idle session is asked to close it; its permit then goes to the line.
    let idle = 1;
    const pool: IdleSessions = {
      closeIdle(ended) {
        if (!idle) return false;
        idle--;
        setImmediate(() => {
          budget.release();
          ended();
        });
        return true;
      },
    };
    budget.offerIdle(pool);
    await first;
    expect(order).toEqual(['first']);
    budget.release();
    await second;
    expect(order).toEqual(['first', 'second']);
    expect(budget.inUse).toBe(2);
    expect(budget.peak).toBe(2);
    expect(budget.waiting).toBe(0);
  });
});
