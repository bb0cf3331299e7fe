// Routes that read the run history answer within ROUTE_POSTGRES_DEADLINE_MS whatever PostgreSQL
// does: a read that PostgreSQL does not answer (stalled, refused, lost) is a 503 naming it, like
// requireRedis does for Redis. Each read is given up after PG_ANSWER_TIMEOUT_MS, closing its
// session (the runtime's readTimeoutMs), so a stalled database keeps no session; the deadline
// here bounds the rest (a connection that does not come, a wait for a session of the budget).
import { ServiceUnavailableError } from '../core/errors.ts';
import { postgresFailure, postgresLabel } from '../runner/postgres-failure.ts';
import { settleWithin } from '../runner/redis-failure.ts';
import type { Handler } from './handlers.ts';

/** The whole answer of a route that reads PostgreSQL: under the 5 s every route answers within. */
export const ROUTE_POSTGRES_DEADLINE_MS = 4500;

export function requirePostgres(handler: Handler): Handler {
  return async (deps, req) => {
    const { config } = deps.rt;
    const label = postgresLabel(config.targets.get(config.history.target)!);
    const late = () =>
      new ServiceUnavailableError(`${label} did not answer within ${ROUTE_POSTGRES_DEADLINE_MS / 1000} s; try again`);
    try {
      return await settleWithin(handler(deps, req), ROUTE_POSTGRES_DEADLINE_MS, late);
    } catch (err) {
      if (err instanceof ServiceUnavailableError) return { status: 503, body: { error: err.message } };
      const failure = postgresFailure(err);
      if (failure) return { status: 503, body: { error: `${label} ${failure}; try again` } };
      throw err;
    }
  };
}
