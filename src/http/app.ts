// The HTTP server: Bull Board at /admin/queues, the JSON API under /api, probes.
// Everything but /healthz and the login page needs a token or a session cookie.
import express, { type NextFunction, type Request, type Response } from 'express';
import { rateLimit } from 'express-rate-limit';
import helmet from 'helmet';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { AlertMonitor } from '../monitoring/alerts.ts';
import type { Metrics } from '../monitoring/metrics.ts';
import type { Runtime } from '../runner/runtime.ts';
import { redact } from '../core/redact.ts';
import { type Auth, bearerToken, safeEqual, type Role } from './auth.ts';
import { enqueueJob, getJob, listBackups, listHistory, listSchedules, readiness, type Handler } from './handlers.ts';
import { loginPage } from './login-page.ts';

export const BOARD_PATH = '/admin/queues';

declare module 'express-serve-static-core' {
  interface Request {
    role?: Role;
  }
}

function boardRouter(rt: Runtime, readOnly: boolean) {
  const adapter = new ExpressAdapter();
  adapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: rt.queues.all().map((q) => new BullMQAdapter(q, { readOnlyMode: readOnly, allowRetries: !readOnly })),
    serverAdapter: adapter,
    options: { uiConfig: { boardTitle: readOnly ? 'pgmaint (read-only)' : 'pgmaint' } },
  });
  return adapter.getRouter() as express.Router;
}

const BODY_LIMIT = '64kb';

const isWrite = (method: string) => !['GET', 'HEAD', 'OPTIONS'].includes(method);

/**
 * Refuses a request that a browser says came from another origin. 'strict' also
 * refuses one that says nothing (a cookie write must prove where it came from);
 * 'lenient' lets it through (a script signing in with curl).
 */
function foreignOriginGuard(mode: 'strict' | 'lenient') {
  return (req: Request, res: Response, next: NextFunction) => {
    const site = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    let sameOrigin: boolean | undefined;
    // Sec-Fetch-Site is set by the browser itself and cannot be forged by a page; browsers
    // send it only to https and localhost origins, so over plain HTTP the Origin decides.
    if (typeof site === 'string') sameOrigin = site === 'same-origin' || site === 'none';
    else if (typeof origin === 'string') {
      // Behind a trusted proxy, req.host is the host the browser asked for.
      const hosts = [req.headers.host, req.host].filter(Boolean);
      let originHost = '';
      try {
        originHost = new URL(origin).host;
      } catch {
        /* "null" or garbage: not our origin */
      }
      sameOrigin = hosts.includes(originHost);
    }
    if (sameOrigin === true || (sameOrigin === undefined && mode === 'lenient')) {
      next();
      return;
    }
    res.status(403).json({
      error:
        sameOrigin === false
          ? `cross-origin request refused: ${typeof origin === 'string' ? `Origin ${origin}` : `Sec-Fetch-Site ${site}`} is not this server; a cookie-authenticated write must come from pgmaint's own pages (API clients send Authorization: Bearer)`
          : "a cookie-authenticated write needs an Origin or Sec-Fetch-Site header from pgmaint's own pages; API clients send Authorization: Bearer",
    });
  };
}

export interface AppParts {
  metrics?: Metrics;
  monitor?: AlertMonitor;
  /** Ad-hoc enqueues per client per minute (default: ENQUEUE_RATE_LIMIT). */
  enqueueRateLimit?: number;
}

export function createApp(rt: Runtime, auth: Auth, parts: AppParts = {}): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');
  // Bull Board's page runs inline scripts and styles of its own; everything else is locked down.
  app.use(
    helmet({
      contentSecurityPolicy: {
        directives: {
          'script-src': ["'self'", "'unsafe-inline'"],
          'style-src': ["'self'", "'unsafe-inline'", 'https:'],
          'img-src': ["'self'", 'data:'],
          // Plain HTTP is how compose publishes port 3000: a browser told to upgrade would
          // post the login form to an https:// that nothing serves. TLS proxies set HSTS.
          'upgrade-insecure-requests': null,
        },
      },
      frameguard: { action: 'deny' },
      // same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on our own
      // form posts, and over plain HTTP (no Sec-Fetch-Site) the origin check needs the real one.
      referrerPolicy: { policy: 'same-origin' },
      hsts: false, // TLS ends at the operator's proxy, which sets it
    }),
  );

  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

  app.get('/login', (_req, res) => {
    res.type('html').send(loginPage());
  });
  app.post(
    '/login',
    foreignOriginGuard('lenient'),
    express.urlencoded({ extended: false, limit: '4kb' }),
    (req, res) => {
      const role = auth.roleForToken(typeof req.body?.token === 'string' ? req.body.token : undefined);
      if (!role) {
        res.status(401).type('html').send(loginPage('That token is not valid.'));
        return;
      }
      res.setHeader('Set-Cookie', auth.cookieHeader(role, req.secure));
      res.redirect(303, BOARD_PATH);
    },
  );
  app.post('/logout', foreignOriginGuard('lenient'), (_req, res) => {
    res.setHeader('Set-Cookie', 'pgmaint_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0');
    res.redirect(303, '/login');
  });

  // Prometheus may scrape with a token that opens nothing else.
  if (parts.metrics) {
    const metrics = parts.metrics;
    app.get('/metrics', (req, res, next) => {
      const bearer = bearerToken(req.headers.authorization);
      const scrape = Boolean(bearer && rt.config.metricsToken && safeEqual(bearer, rt.config.metricsToken));
      if (!scrape && !auth.authenticate({ authorization: req.headers.authorization, cookie: req.headers.cookie })) {
        res
          .status(401)
          .setHeader('WWW-Authenticate', 'Bearer')
          .json({ error: 'authentication required: Authorization: Bearer <METRICS_TOKEN, viewer or admin token>' });
        return;
      }
      metrics.render().then(({ contentType, body }) => res.type(contentType).send(body), next);
    });
  }

  // Authentication for everything below.
  app.use((req, res, next) => {
    const role = auth.authenticate({ authorization: req.headers.authorization, cookie: req.headers.cookie });
    if (!role) {
      if (req.method === 'GET' && req.accepts(['json', 'html']) === 'html' && !req.path.startsWith('/api')) {
        res.redirect(303, '/login');
        return;
      }
      res
        .status(401)
        .setHeader('WWW-Authenticate', 'Bearer')
        .json({ error: 'authentication required: Authorization: Bearer <token>' });
      return;
    }
    req.role = role;
    next();
  });

  // A write carried only by the session cookie must come from our own pages: a form
  // auto-submitted by another site (or another port of this host, which SameSite
  // counts as the same site) is refused. Bearer-token clients are not browsers.
  app.use((req, res, next) =>
    isWrite(req.method) && !bearerToken(req.headers.authorization)
      ? foreignOriginGuard('strict')(req, res, next)
      : next(),
  );

  // Viewers read; any other method is a write.
  app.use((req, res, next) => {
    if (req.role === 'viewer' && !['GET', 'HEAD', 'OPTIONS'].includes(req.method)) {
      res.status(403).json({ error: 'the viewer token is read-only' });
      return;
    }
    next();
  });

  // Bull Board's own API takes the same body limit as ours.
  app.use(BOARD_PATH, express.json({ limit: BODY_LIMIT }));
  const adminBoard = boardRouter(rt, false);
  const viewerBoard = boardRouter(rt, true);
  app.use(BOARD_PATH, (req, res, next) => (req.role === 'admin' ? adminBoard : viewerBoard)(req, res, next));

  const route = (handler: Handler) => async (req: Request, res: Response, next: NextFunction) => {
    try {
      const out = await handler(rt, {
        params: req.params as Record<string, string>,
        query: req.query as Record<string, string | undefined>,
        body: req.body,
        role: req.role!,
      });
      res.status(out.status).json(out.body);
    } catch (err) {
      next(err);
    }
  };

  // A body that is not declared JSON is refused, never read as an empty payload:
  // curl -d sends form-encoded data by default. No body at all still means {}.
  app.use('/api', (req, res, next) => {
    const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
    if (isWrite(req.method) && hasBody && !req.is('application/json')) {
      res.status(415).json({
        error: `request body must be JSON: send Content-Type: application/json (got ${req.headers['content-type'] ? `"${req.headers['content-type']}"` : 'none'})`,
      });
      return;
    }
    next();
  });
  app.use('/api', express.json({ limit: BODY_LIMIT }));
  app.get('/readyz', route(readiness));
  // A runaway script must not flood the queues: ad-hoc enqueues are rate-limited per client.
  const enqueueLimit = rateLimit({
    windowMs: 60_000,
    limit: parts.enqueueRateLimit ?? rt.config.enqueueRateLimit,
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    message: { error: 'too many enqueue requests: try again in a minute' },
  });
  app.post('/api/jobs/:name', enqueueLimit, route(enqueueJob));
  app.get('/api/jobs/:queue/:id', route(getJob));
  app.get('/api/schedules', route(listSchedules));
  app.get('/api/history', route(listHistory));
  app.get('/api/backups', route(listBackups));
  if (parts.monitor) {
    const monitor = parts.monitor;
    app.get(
      '/api/alerts',
      route(async () => ({ status: 200, body: { open: await monitor.open() } })),
    );
  }

  app.use((_req: Request, res: Response) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: NextFunction) => {
    if (err.type === 'entity.parse.failed') {
      res.status(400).json({ error: `request body is not valid JSON: ${err.message}` });
      return;
    }
    if (err.type === 'entity.too.large') {
      res.status(413).json({ error: `request body is larger than ${BODY_LIMIT}` });
      return;
    }
    if (err.status && err.status < 500) {
      res.status(err.status).json({ error: err.message });
      return;
    }
    rt.logger.error({ err }, 'request failed');
    res.status(500).json({ error: redact(err.message) });
  });
  return app;
}
