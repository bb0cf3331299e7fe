// The server role: HTTP API and Bull Board, schedule sync, the schedule watchdog,
// the health sampler (the snapshot /metrics, /api/status and alerts read) and
// run-history retention.
import type { Server } from 'node:http';
import { AlertMonitor, type HealthSource, webhookNotifier } from '../monitoring/alerts.ts';
import type { Config } from '../core/config.ts';
import { ConfigError } from '../core/errors.ts';
import { HealthReader } from '../monitoring/health.ts';
import { HealthSampler, SAMPLE_INTERVAL_MS } from '../monitoring/sampler.ts';
import { Metrics } from '../monitoring/metrics.ts';
import type { Runtime } from '../runner/runtime.ts';
import { createApp } from './app.ts';
import { Auth } from './auth.ts';

export async function startServer(
  rt: Runtime,
  opts: {
    port?: number;
    host?: string;
    enqueueRateLimit?: number;
    /** How often the health snapshot is taken; 0: none is kept, every request reads afresh (tests). */
    sampleIntervalMs?: number;
  } = {},
): Promise<{ server: Server; port: number; monitor: AlertMonitor }> {
  const { config, logger } = rt;
  requireServerAuth(config);
  if (config.insecureNoAuth) {
    logger.warn(
      '!!! PGMAINT_INSECURE_NO_AUTH is set: the API and Bull Board are open to anyone who can reach this port, with ' +
        'admin rights. Never use this outside a local demo. !!!',
    );
  }
  await rt.history.migrate();
  await rt.scheduler.sync();
  rt.scheduler.startWatchdog(config.scheduler.watchdogIntervalMs);

  const prune = setInterval(() => {
    rt.history.prune(config.history.retentionDays).then(
      (n) => n && logger.info({ deleted: n }, 'run history pruned'),
      (err) => logger.error({ err }, 'run history prune failed'),
    );
  }, 3600_000);
  prune.unref();
  rt.onClose(() => clearInterval(prune));

  const health = new HealthSampler(rt, new HealthReader(rt), opts.sampleIntervalMs ?? SAMPLE_INTERVAL_MS);
  const metrics = new Metrics(health);
  health.onSample((s) =>
    metrics.prepare(s).catch((err) => logger.error({ err }, 'metrics of the health snapshot not rendered')),
  );
  health.start();
  rt.onClose(() => health.stop());
  const monitor = startMonitor(rt, health);
  const app = createApp(rt, new Auth(config.adminToken, config.viewerToken, config.insecureNoAuth), {
    metrics,
    monitor,
    health,
    enqueueRateLimit: opts.enqueueRateLimit,
  });
  const [wantPort, host] = [opts.port ?? config.port, opts.host ?? config.host];
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(wantPort, host, (err?: Error) =>
      err ? reject(listenError(err, wantPort, host)) : resolve(s),
    );
  });
  const port = (server.address() as { port: number }).port;
  rt.onClose(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  logger.info({ host: opts.host ?? config.host, port, board: `/admin/queues` }, 'server listening');
  return { server, port, monitor };
}

/** The server's refusal to start without ADMIN_TOKEN: checked before Redis or PostgreSQL is asked anything. */
export function requireServerAuth(config: Config): void {
  if (!config.adminToken && !config.insecureNoAuth) {
    throw new ConfigError(
      'ADMIN_TOKEN: required for the server (at least 16 characters); a local demo may set ' +
        'PGMAINT_INSECURE_NO_AUTH=1 instead',
    );
  }
}

/** "PORT: 3000 is in use on 0.0.0.0" rather than a bare EADDRINUSE. */
function listenError(err: Error, port: number, host: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE')
    return new ConfigError(
      `PORT: ${port} is already in use on ${host} (another pgmaint or program listens there); ` +
        'choose another port with PORT=…, or PORT=0 for a free one',
    );
  if (code === 'EADDRNOTAVAIL' || code === 'EACCES')
    return new ConfigError(`HOST/PORT: cannot listen on ${host}:${port}: ${err.message}`);
  return err;
}

/** The alert monitor with its webhook; stopped on close. */
export function startMonitor(rt: Runtime, health: HealthSource = new HealthReader(rt)): AlertMonitor {
  const { config, logger } = rt;
  if (!config.alerts.webhookUrl)
    logger.warn('ALERT_WEBHOOK_URL is not set: alerts go to the log and GET /api/alerts only');
  const monitor = new AlertMonitor(
    rt,
    health,
    config.alerts.webhookUrl ? webhookNotifier(config.alerts.webhookUrl) : undefined,
  );
  monitor.start();
  rt.onClose(() => monitor.stop());
  return monitor;
}
