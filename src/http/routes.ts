// Every route of the HTTP server in one table: method, path, who may call it, what
// body it takes, and its handler. Bull Board is mounted beside it at BOARD_PATH.
import {
  BOARD_PATH,
  enqueueJob,
  favicon,
  getJob,
  type Handler,
  healthz,
  listAlerts,
  listBackups,
  listHistory,
  listJobs,
  listSchedules,
  status,
  login,
  logout,
  metrics,
  requireRedis,
  showLogin,
} from './handlers.ts';
import { resume, throttle } from './governor-handlers.ts';
import { readiness } from './readiness.ts';
import { requirePostgres } from './require-postgres.ts';

export { BOARD_PATH };

/**
 * public: anyone (probes, the sign-in page); scrape: open, with more for a
 * valid token (/metrics asks for METRICS_TOKEN or a role, /readyz shows details);
 * read: a viewer or admin token or session; write: admin only, and from our own
 * origin when carried by the session cookie.
 */
export type Access = 'public' | 'scrape' | 'read' | 'write';

export interface Route {
  method: 'get' | 'post';
  path: string;
  access: Access;
  /** json: an API body (415 unless declared JSON, 64 kB); form: the sign-in form. */
  body?: 'json' | 'form';
  /** Ad-hoc enqueues are rate-limited per client. */
  rateLimited?: boolean;
  /** Served only when the server has this part. */
  needs?: 'metrics' | 'monitor' | 'health';
  /**
   * What the route does when Redis does not answer, within seconds either way. required: 503
   * naming Redis. partial: it answers with what it could read and names Redis among what it
   * could not (/metrics counts it in pgmaint_health_read_errors). Unset: it does not use Redis.
   */
  redis?: 'required' | 'partial';
  /**
   * What the route does when PostgreSQL (the run history's database; /readyz: every target) does not
   * answer, within seconds either way. required: 503 naming PostgreSQL. partial: it answers, naming
   * PostgreSQL among what it could not read. Unset: it does not read PostgreSQL.
   */
  postgres?: 'required' | 'partial';
  handler: Handler;
}

const route = (r: Route): Route => {
  let handler = r.redis === 'required' ? requireRedis(r.handler) : r.handler;
  if (r.postgres === 'required') handler = requirePostgres(handler);
  return { ...r, handler };
};

export const ROUTES: readonly Route[] = (
  [
    { method: 'get', path: '/healthz', access: 'public', handler: healthz },
    { method: 'get', path: '/favicon.ico', access: 'public', handler: favicon },
    { method: 'get', path: '/login', access: 'public', handler: showLogin },
    { method: 'post', path: '/login', access: 'public', body: 'form', handler: login },
    { method: 'post', path: '/logout', access: 'public', handler: logout },
    {
      method: 'get',
      path: '/metrics',
      access: 'scrape',
      needs: 'metrics',
      redis: 'partial',
      postgres: 'partial',
      handler: metrics,
    },
    // A probe (Kubernetes, Compose) needs no token: the status code says it; details need one.
    { method: 'get', path: '/readyz', access: 'scrape', redis: 'partial', postgres: 'partial', handler: readiness },
    // The catalog is the registry's: no Redis.
    { method: 'get', path: '/api/jobs', access: 'read', handler: listJobs },
    {
      method: 'post',
      path: '/api/jobs/:name',
      access: 'write',
      body: 'json',
      rateLimited: true,
      redis: 'required',
      handler: enqueueJob,
    },
    { method: 'get', path: '/api/jobs/:queue/:id', access: 'read', redis: 'required', handler: getJob },
    {
      method: 'get',
      path: '/api/schedules',
      access: 'read',
      redis: 'required',
      postgres: 'required',
      handler: listSchedules,
    },
    { method: 'get', path: '/api/history', access: 'read', postgres: 'required', handler: listHistory },
    // The backups themselves are files and the bucket; the last drill and restore-check, the run history.
    { method: 'get', path: '/api/backups', access: 'read', postgres: 'required', handler: listBackups },
    { method: 'get', path: '/api/alerts', access: 'read', needs: 'monitor', redis: 'required', handler: listAlerts },
    {
      method: 'get',
      path: '/api/status',
      access: 'read',
      needs: 'health',
      redis: 'partial',
      postgres: 'partial',
      handler: status,
    },
    // Holds by hand on governed runs (docs/governor.md): admin only, like every write.
    {
      method: 'post',
      path: '/api/governor/throttle',
      access: 'write',
      body: 'json',
      redis: 'required',
      handler: throttle,
    },
    { method: 'post', path: '/api/governor/resume', access: 'write', body: 'json', redis: 'required', handler: resume },
  ] satisfies Route[]
).map(route);
