// Handlers that do not know Express: each takes a plain request and returns
// {status, body} (and headers where a page needs them). routes.ts maps them to
// paths; app.ts is the thin Express adapter.
import { readBackupCatalog } from '../backup/target-catalog.ts';
import { ANSWER_DEADLINE_MS, objectStoreFor } from '../backup/object-store.ts';
import { listPartitionArchives } from '../backup/partition-catalog.ts';
import { redact } from '../core/redact.ts';
import { backupDirOf } from '../core/config.ts';
import { redisFailureMessage, redisLabel } from '../runner/redis-failure.ts';
import type { Runtime } from '../runner/runtime.ts';
import { ObjectStoreError, PayloadError, ServiceUnavailableError } from '../core/errors.ts';
import type { AlertMonitor } from '../monitoring/alerts.ts';
import type { SnapshotProvider } from '../monitoring/sampler.ts';
import type { Metrics } from '../monitoring/metrics.ts';
import { statusReport } from '../monitoring/status.ts';
import { type Auth, bearerToken, type Role, safeEqual } from './auth.ts';
import { restorables } from './backups-answer.ts';
import { loginPage } from './login-page.ts';
import { MAIN_TARGET } from '../core/constants.ts';

export interface ApiRequest {
  params: Record<string, string>;
  query: Record<string, string | undefined>;
  body: unknown;
  /** Who asked; undefined on public routes. */
  role?: Role;
  authorization?: string;
  /** The request came over TLS (directly, or as a trusted proxy says). */
  secure: boolean;
}

export interface ApiResponse {
  status: number;
  /** JSON unless contentType says otherwise (then a string). */
  body: unknown;
  contentType?: string;
  headers?: Record<string, string>;
}

/** What handlers may use: the runtime, and the server's parts. */
export interface HttpDeps {
  rt: Runtime;
  auth: Auth;
  metrics?: Metrics;
  monitor?: AlertMonitor;
  health?: SnapshotProvider;
}

export type Handler = (deps: HttpDeps, req: ApiRequest) => Promise<ApiResponse>;

export const BOARD_PATH = '/admin/queues';

const error = (status: number, message: string, extra: object = {}): ApiResponse => ({
  status,
  body: { error: message, ...extra },
});

/** 503 before a command is sent, while the connection is down: nothing is queued to run when it returns. */
function redisUnavailable(rt: Runtime, consequence = 'try again'): ApiResponse | undefined {
  const status = rt.queues.connection.status;
  if (status === 'ready') return undefined;
  return error(503, `${redisLabel(rt.config)} is not reachable (connection ${status}); ${consequence}`);
}

/** The 503 message for an error about reaching Redis (ours say what to do already); else undefined. */
function redisRefusal(rt: Runtime, err: unknown): string | undefined {
  if (err instanceof ServiceUnavailableError) return err.message;
  const message = redisFailureMessage(rt.config, err);
  return message && `${message}; try again`;
}

/**
 * For routes that need Redis: a command that Redis does not answer (the connection is down,
 * or it gave no answer within its timeout) is a 503 naming Redis, not a 500 or a hang.
 */
export function requireRedis(handler: Handler): Handler {
  return async (deps, req) => {
    try {
      return await handler(deps, req);
    } catch (err) {
      const message = redisRefusal(deps.rt, err);
      if (message) return error(503, message);
      throw err;
    }
  };
}

/** Bull Board's API errors, in its shape: one about reaching Redis is a 503 naming Redis, like ours. */
export function boardError(rt: Runtime) {
  return (err: Error & { statusCode?: number }): { status: number; body: object } => {
    const refusal = redisRefusal(rt, err);
    return {
      status: refusal ? 503 : (err.statusCode ?? 500),
      body: { error: { key: 'ERRORS.INTERNAL_SERVER_ERROR' }, message: refusal ?? redact(err.message) },
    };
  };
}

/** Query parameters a handler reads; any other is refused, naming it. */
function unknownQuery(req: ApiRequest, known: string[]): ApiResponse | undefined {
  const extra = Object.keys(req.query).filter((k) => !known.includes(k));
  if (!extra.length) return undefined;
  return error(
    400,
    `unknown query parameter ${extra.map((k) => `"${k}"`).join(', ')} (known: ${known.join(', ') || 'none'})`,
    { issues: extra.map((k) => ({ path: k, message: 'unknown query parameter' })) },
  );
}

export const enqueueJob: Handler = async ({ rt }, req) => {
  const name = req.params.name!;
  if (!rt.registry.get(name)) return error(404, rt.registry.unknownJob(name), { jobs: rt.registry.names() });
  const refusal = unknownQuery(req, []) ?? redisUnavailable(rt, 'nothing was enqueued, try again');
  if (refusal) return refusal;
  try {
    // One target (the body is its payload), or many in one request: `targets: [...]` or "all".
    const { payloads, fleet } = rt.registry.parseRequest(name, req.body ?? {});
    if (fleet) return fleetEnqueued(name, await rt.queues.enqueueEach(name, payloads, { trigger: 'ad-hoc' }));
    const { job, existing, reason } = await rt.queues.enqueue(name, payloads[0], { trigger: 'ad-hoc' });
    return {
      status: 202,
      body: { id: job.id, queue: job.queueName, name: job.name, existing, ...(reason ? { reason } : {}) },
    };
  } catch (err) {
    if (err instanceof PayloadError) return error(400, err.message, { issues: err.issues });
    // Says whether anything was enqueued (an add that timed out never is: runner/add-deadline.ts).
    if (err instanceof ServiceUnavailableError) return error(503, err.message);
    throw err;
  }
};

/** Each target's job id, or why it was merged or not enqueued; 503 when Redis refused any. */
function fleetEnqueued(name: string, results: Awaited<ReturnType<Runtime['queues']['enqueueEach']>>): ApiResponse {
  const jobs = results.map((r) =>
    'outcome' in r
      ? {
          target: r.target,
          id: r.outcome.job.id,
          existing: r.outcome.existing,
          ...(r.outcome.reason ? { reason: r.outcome.reason } : {}),
        }
      : { target: r.target, error: r.error instanceof ServiceUnavailableError ? r.error.message : 'not enqueued' },
  );
  const refused = results.filter((r) => 'error' in r);
  const body = { queue: name, name, jobs, enqueued: jobs.length - refused.length, refused: refused.length };
  if (!refused.length) return { status: 202, body };
  const first = refused[0] as { error: Error };
  return {
    status: 503,
    body: {
      error: `${refused.length} of ${jobs.length} targets not enqueued: ${redact(first.error.message)}`,
      ...body,
    },
  };
}

export const getJob: Handler = async ({ rt }, req) => {
  const { queue, id } = req.params as { queue: string; id: string };
  if (!rt.registry.get(queue)) return error(404, `unknown queue "${queue}"`);
  const notFound = error(
    404,
    `no job ${id} in queue ${queue} (finished jobs are kept in bounded numbers; see the run history)`,
  );
  // Job ids are numbers or scheduler ids ("repeat:…"); the queue's own keys (events,
  // meta, id, completed, …) live beside the jobs and must never be read as one.
  if (!/^(\d{1,20}|repeat:[A-Za-z0-9_.:-]{1,200})$/.test(id)) return notFound;
  const unavailable = redisUnavailable(rt);
  if (unavailable) return unavailable;
  // The state before the job's fields: a run that ends between the two reads shows its old
  // state with its new fields, never "completed" before its result is there (a follower polls this).
  const state = await rt.queues.get(queue).getJobState(id);
  const job = await rt.queues.get(queue).getJob(id);
  if (!job || job.id !== id || job.name !== queue || !Number.isFinite(job.timestamp)) return notFound;
  return {
    status: 200,
    body: {
      id: job.id,
      name: job.name,
      state,
      // A completed run is done: its 100 % reaches the job's hash moments later
      // (written in batches) when the handler reported none.
      progress: state === 'completed' ? 100 : job.progress,
      result: job.returnvalue ?? null,
      failedReason: job.failedReason ?? null,
      attemptsMade: job.attemptsMade,
      trigger: job.data.trigger,
      payload: job.data.payload,
    },
  };
};

/** The job catalog with this server's run settings (the job's defaults, laid over by the config file). */
export const listJobs: Handler = async ({ rt }, req) => {
  const refusal = unknownQuery(req, []);
  if (refusal) return refusal;
  const jobs = rt.registry.names().map((name) => {
    const { def, run } = rt.registry.get(name)!;
    return { name, description: def.description, defaults: run };
  });
  return { status: 200, body: { jobs } };
};

export const listSchedules: Handler = async ({ rt }) => ({
  status: 200,
  body: { schedules: await rt.describeSchedules() },
});

export const listHistory: Handler = async ({ rt }, req) => {
  const refusal = unknownQuery(req, ['job', 'limit']);
  if (refusal) return refusal;
  const { job, limit = '50' } = req.query;
  if (typeof limit !== 'string' || !/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000) {
    return error(400, `limit: must be a whole number from 1 to 1000 (got ${JSON.stringify(limit)})`, {
      issues: [{ path: 'limit', message: 'must be a whole number from 1 to 1000' }],
    });
  }
  if (job !== undefined && (typeof job !== 'string' || !rt.registry.get(job))) {
    return error(400, `job: ${rt.registry.unknownJob(String(job))}`, {
      issues: [{ path: 'job', message: 'unknown job' }],
    });
  }
  const runs = await rt.history.list({ job, limit: Number(limit) });
  // The zone a table of these runs is shown in (the CLI's, local or remote).
  return { status: 200, body: { runs, timeZone: rt.config.businessTimeZone } };
};

/** An error reading a directory under BACKUP_DIR, naming BACKUP_DIR and the path; else undefined. */
function unreadable(rt: Runtime, err: Error): Error | undefined {
  const { code, path: where } = err as NodeJS.ErrnoException;
  const dir = backupDirOf(rt.config);
  if (!code || !where || (where !== dir && !where.startsWith(`${dir}/`))) return undefined;
  // "EACCES: permission denied, scandir '…'": the words between the code and the call.
  const why = err.message.replace(/^[A-Z]+: /, '').split(',')[0];
  const fix =
    code === 'EACCES' || code === 'EPERM'
      ? 'the user pgmaint runs as must be able to read it'
      : 'it must be a directory (or not exist yet)';
  return new Error(`BACKUP_DIR: cannot read ${where} (${why}, ${code}); BACKUP_DIR is ${dir}: ${fix}`);
}

/** Everything restorable of a target and where it lies, with its verification state, and the recovery window. */
export const listBackups: Handler = async ({ rt }, req) => {
  const target = req.query.target ?? MAIN_TARGET;
  const t = rt.config.targets.get(target);
  if (!t) return error(404, `unknown target "${target}"`, { targets: [...rt.config.targets.keys()] });
  // Someone waits for this answer: the bucket gets ANSWER_DEADLINE_MS in all, not the job-sized deadlines.
  const store = objectStoreFor(rt.config, ANSWER_DEADLINE_MS);
  const read = async () => {
    const catalog = await readBackupCatalog(backupDirOf(rt.config), t, Date.now(), store);
    return { catalog, archives: await listPartitionArchives(backupDirOf(rt.config), target, store) };
  };
  const got = await read()
    .catch((err: Error) => (err instanceof ObjectStoreError ? err : (unreadable(rt, err) ?? Promise.reject(err))))
    .finally(() => store?.close());
  // The bucket is the shared catalog: without it the list would be wrong, so none is given; nor
  // without BACKUP_DIR (unreadable by this process's user).
  if (got instanceof Error) return error(503, got.message);
  const { catalog, archives } = got;
  // The last verdict of each proof job, from the durable run history.
  const lastRun = async (job: string) => {
    const row = await rt.history.lastFinished(job, target);
    return row
      ? {
          outcome: row.outcome,
          finishedAt: row.finished_at,
          result: row.result,
          error: row.error,
          errorCode: row.error_code,
        }
      : null;
  };
  const ageSeconds = (iso: string | undefined) => (iso ? Math.round((Date.now() - Date.parse(iso)) / 1000) : null);
  return {
    status: 200,
    body: {
      target,
      timeZone: rt.config.businessTimeZone,
      // The figures to alert on: how old the newest verified backups are.
      newestDumpAgeSeconds: ageSeconds(catalog.dumps[0]?.manifest.finishedAt),
      newestBaseBackupAgeSeconds: ageSeconds(catalog.newestBaseBackupAt),
      engine: t.backup.engine,
      ...(await restorables(t, catalog, archives)),
      // Manifests, verdicts and sets read but not trusted (not listed above), each named with why.
      refused: [...catalog.refused, ...archives.refused],
      lastDrill: await lastRun('pitr-drill'),
      lastRestoreCheck: await lastRun('restore-check'),
    },
  };
};

export const healthz: Handler = async () => ({ status: 200, body: { ok: true } });

/** Browsers ask for it on every page, the sign-in page too: an empty answer, not a sign-in redirect. */
export const favicon: Handler = async () => ({
  status: 204,
  body: '',
  contentType: 'text',
  headers: { 'Cache-Control': 'public, max-age=86400' },
});

export const showLogin: Handler = async () => ({ status: 200, body: loginPage(), contentType: 'html' });

/** The login form: a valid token becomes the session cookie. */
export const login: Handler = async ({ auth }, req) => {
  const token = (req.body as { token?: unknown } | undefined)?.token;
  const role = auth.roleForToken(typeof token === 'string' ? token : undefined);
  if (!role) return { status: 401, body: loginPage('That token is not valid.'), contentType: 'html' };
  return {
    status: 303,
    body: '',
    contentType: 'text',
    headers: { Location: BOARD_PATH, 'Set-Cookie': auth.cookieHeader(role, req.secure) },
  };
};

export const logout: Handler = async ({ auth }) => ({
  status: 303,
  body: '',
  contentType: 'text',
  headers: { Location: '/login', 'Set-Cookie': auth.clearCookieHeader() },
});

/** Prometheus text; METRICS_TOKEN opens this and nothing else. */
export const metrics: Handler = async ({ rt, metrics }, req) => {
  const bearer = bearerToken(req.authorization);
  const scrape = Boolean(bearer && rt.config.metricsToken && safeEqual(bearer, rt.config.metricsToken));
  if (!scrape && !req.role) {
    return {
      status: 401,
      body: { error: 'authentication required: Authorization: Bearer <METRICS_TOKEN, viewer or admin token>' },
      headers: { 'WWW-Authenticate': 'Bearer' },
    };
  }
  const { contentType, body } = await metrics!.render();
  return { status: 200, body, contentType };
};

/**
 * The sampler's snapshot, with its age; `?fresh=1` (admin: it reads every target) waits for a new one.
 * Partial rather than absent: what could not be read (Redis's parts among them) is named in `errors`.
 */
export const status: Handler = async ({ rt, health, monitor }, req) => {
  const refusal = unknownQuery(req, ['fresh']);
  if (refusal) return refusal;
  const { fresh } = req.query;
  if (fresh !== undefined && fresh !== '1')
    return error(400, `fresh: must be 1 (got ${JSON.stringify(fresh)})`, {
      issues: [{ path: 'fresh', message: 'must be 1' }],
    });
  if (fresh && req.role !== 'admin')
    return error(403, 'fresh: a new reading (every target read now) needs the admin token; viewers get the snapshot', {
      issues: [{ path: 'fresh', message: 'needs the admin token' }],
    });
  const snapshots = health!;
  if (fresh) await snapshots.refresh();
  const report = await statusReport(snapshots, monitor ? monitor.open() : Promise.resolve([]), snapshots.source);
  return { status: 200, body: { ...report, timeZone: rt.config.businessTimeZone } };
};

export const listAlerts: Handler = async ({ monitor }) => ({ status: 200, body: { open: await monitor!.open() } });
