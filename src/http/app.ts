// The Express adapter: security headers, authentication, the origin check for cookie
// writes, body parsing, Bull Board, and the route table of routes.ts, whose handlers
// know nothing of Express. Everything but the public routes needs a token or a session.
import express, { type NextFunction, type Request, type Response } from 'express';
import { rateLimit } from 'express-rate-limit';
import helmet from 'helmet';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { AlertMonitor } from '../monitoring/alerts.ts';
import type { HealthSampler } from '../monitoring/sampler.ts';
import type { Metrics } from '../monitoring/metrics.ts';
import type { Runtime } from '../runner/runtime.ts';
import { redact } from '../core/redact.ts';
import { type Auth, bearerToken, type Role } from './auth.ts';
import { boardView } from './board-view.ts';
import { boardError, type Handler, type HttpDeps } from './handlers.ts';
import { BOARD_PATH, ROUTES, type Route } from './routes.ts';

export { BOARD_PATH };

declare module 'express-serve-static-core' {
  interface Request {
    role?: Role;
  }
}

function boardRouter(rt: Runtime, readOnly: boolean) {
  const adapter = new ExpressAdapter();
  adapter.setBasePath(BOARD_PATH);
  // Every time on the board in the business zone, labelled with its offset ("GMT+6"),
  // whatever zone the operator's browser is in.
  const zone = { timeZone: rt.config.businessTimeZone, timeZoneName: 'short' } as const;
  const time = { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' } as const;
  createBullBoard({
    queues: rt.queues.all().map((q) => new BullMQAdapter(q, { readOnlyMode: readOnly, allowRetries: !readOnly })),
    serverAdapter: adapter,
    options: {
      uiConfig: {
        boardTitle: readOnly ? 'pgmaint (read-only)' : 'pgmaint',
        hideDocsLink: true,
        dateFormats: {
          short: { ...time, ...zone },
          common: { month: 'short', day: 'numeric', ...time, ...zone },
          full: { year: 'numeric', month: 'short', day: 'numeric', ...time, ...zone },
        },
      },
    },
  });
  // Redis not answering: a 503 naming it, not a 500 (Bull Board's status type lists no 503; its adapter sends any).
  adapter.setErrorHandler(boardError(rt) as Parameters<typeof adapter.setErrorHandler>[0]);
  return adapter.getRouter() as express.Router;
}

/**
 * Bull Board's page links a web font from a public CDN: a board on a machine with no
 * internet would wait on it, and it tells an outside host who uses the board. The link
 * is taken out of the page (the CSS falls back to the system sans-serif).
 */
function withoutOutsideLinks(_req: Request, res: Response, next: NextFunction) {
  const send = res.send.bind(res);
  res.send = (body?: unknown) =>
    send(typeof body === 'string' ? body.replace(/<link\b[^>]*\bhref="https?:\/\/[^"]*"[^>]*>/gi, '') : body);
  next();
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
          ? `cross-origin request refused: ` +
            `${typeof origin === 'string' ? `Origin ${origin}` : `Sec-Fetch-Site ${site}`} is not this server; a ` +
            `cookie-authenticated write must come from pgmaint's own pages (API clients send Authorization: Bearer)`
          : "a cookie-authenticated write needs an Origin or Sec-Fetch-Site header from pgmaint's own pages; API " +
            'clients send Authorization: Bearer',
    });
  };
}

export interface AppParts {
  metrics?: Metrics;
  monitor?: AlertMonitor;
  health?: HealthSampler;
  /** Ad-hoc enqueues per client per minute (default: ENQUEUE_RATE_LIMIT). */
  enqueueRateLimit?: number;
}

/** A body that is not declared JSON is refused, never read as an empty payload: curl -d
 * sends form-encoded data by default. No body at all still means {}. */
function requireJsonBody(req: Request, res: Response, next: NextFunction) {
  const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
  if (hasBody && !req.is('application/json')) {
    const got = req.headers['content-type'] ? `"${req.headers['content-type']}"` : 'none';
    res.status(415).json({ error: `request body must be JSON: send Content-Type: application/json (got ${got})` });
    return;
  }
  next();
}

export function createApp(rt: Runtime, auth: Auth, parts: AppParts = {}): express.Express {
  const app = express();
  const deps: HttpDeps = { rt, auth, metrics: parts.metrics, monitor: parts.monitor, health: parts.health };
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');
  // Bull Board's page runs inline scripts and styles of its own; everything else is locked down.
  app.use(
    helmet({
      contentSecurityPolicy: {
        directives: {
          'script-src': ["'self'", "'unsafe-inline'"],
          'style-src': ["'self'", "'unsafe-inline'"],
          'font-src': ["'self'", 'data:'],
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

  // A runaway script must not flood the queues: ad-hoc enqueues are rate-limited per client.
  const enqueueLimit = rateLimit({
    windowMs: 60_000,
    limit: parts.enqueueRateLimit ?? rt.config.enqueueRateLimit,
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    message: { error: 'too many enqueue requests: try again in a minute' },
  });
  const served = ROUTES.filter((r) => !r.needs || parts[r.needs]);
  const mount = (r: Route) => {
    const chain: express.RequestHandler[] = [];
    if (r.method === 'post' && r.access === 'public') chain.push(foreignOriginGuard('lenient'));
    if (r.access === 'scrape') chain.push(optionalRole(auth));
    if (r.body === 'json') chain.push(requireJsonBody, express.json({ limit: BODY_LIMIT }));
    if (r.body === 'form') chain.push(express.urlencoded({ extended: false, limit: '4kb' }));
    if (r.rateLimited) chain.push(enqueueLimit);
    app[r.method](r.path, ...chain, adapt(deps, r.handler));
  };

  // Public routes, and /metrics (its own scrape token), before authentication.
  for (const r of served) if (r.access === 'public' || r.access === 'scrape') mount(r);

  // Authentication for everything below, Bull Board and unknown paths included.
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
    if (req.role === 'viewer' && isWrite(req.method)) {
      res.status(403).json({ error: 'the viewer token is read-only' });
      return;
    }
    next();
  });

  // Bull Board's own API takes the same body limit as ours.
  app.use(BOARD_PATH, express.json({ limit: BODY_LIMIT }));
  const adminBoard = boardRouter(rt, false);
  const viewerBoard = boardRouter(rt, true);
  app.use(BOARD_PATH, withoutOutsideLinks, boardView(rt.config.businessTimeZone), (req, res, next) =>
    (req.role === 'admin' ? adminBoard : viewerBoard)(req, res, next),
  );

  for (const r of served) if (r.access === 'read' || r.access === 'write') mount(r);

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

/** Sets req.role when the request carries valid credentials; refuses nothing. */
function optionalRole(auth: Auth): express.RequestHandler {
  return (req, _res, next) => {
    req.role = auth.authenticate({ authorization: req.headers.authorization, cookie: req.headers.cookie });
    next();
  };
}

/** Runs an Express-free handler and writes its {status, body, headers}. */
function adapt(deps: HttpDeps, handler: Handler): express.RequestHandler {
  return async (req, res, next) => {
    try {
      const out = await handler(deps, {
        params: req.params as Record<string, string>,
        query: req.query as Record<string, string | undefined>,
        body: req.body,
        role: req.role,
        authorization: req.headers.authorization,
        secure: req.secure,
      });
      for (const [k, v] of Object.entries(out.headers ?? {})) res.setHeader(k, v);
      res.status(out.status);
      if (out.contentType) res.type(out.contentType).send(out.body);
      else res.json(out.body);
    } catch (err) {
      next(err);
    }
  };
}
