// Long-running process roles with their signal handling. SIGTERM/SIGINT: stop
// taking jobs, finish or abort the current ones within worker.shutdownTimeoutMs,
// then close the HTTP server, queues and pools in reverse order of start-up.
import { UsageError } from '../core/errors.ts';
import { loadConfig } from '../core/config.ts';
import { requireServerAuth, startMonitor, startServer } from '../http/server.ts';
import type { Runtime } from '../runner/runtime.ts';
import { WorkerRuntime } from '../runner/worker.ts';
import { createRuntime } from '../pgmaint.ts';

export function startWorkers(rt: Runtime, only?: string[]): WorkerRuntime {
  const workers = new WorkerRuntime({
    connections: rt.connections,
    registry: rt.registry,
    history: rt.history,
    logger: rt.logger,
    schedules: rt.schedules,
    only,
  });
  workers.start();
  rt.onClose(() => workers.close(rt.config.worker.shutdownTimeoutMs));
  return workers;
}

function onSignals(rt: Runtime): void {
  let stoppingSince = 0;
  const stop = (signal: string) => {
    if (stoppingSince) {
      // Ctrl-C under npm delivers SIGINT twice (npm forwards it, the terminal sends it
      // to the group): only a signal sent well after the first forces the exit.
      if (Date.now() - stoppingSince < 2000) return;
      rt.logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stoppingSince = Date.now();
    rt.logger.info({ signal }, 'shutting down');
    rt.close().then(
      () => process.exit(0),
      (err) => {
        rt.logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

export async function runWorkerProcess(opts: { only?: string[] } = {}): Promise<Runtime> {
  // Workers wait for Redis through an outage and carry on (the schedule sync at start too).
  const rt = createRuntime({ redis: 'patient' });
  const unknown = (opts.only ?? []).filter((q) => !rt.registry.get(q));
  if (unknown.length === 1) throw new UsageError(`--queues: ${rt.registry.unknownJob(unknown[0]!)}`);
  if (unknown.length || opts.only?.length === 0) {
    throw new UsageError(
      `--queues: ${unknown.length ? `unknown jobs ${unknown.map((q) => `"${q}"`).join(', ')}` : 'is empty'} (known: ` +
        `${rt.registry.names().join(', ')})`,
    );
  }
  onSignals(rt);
  await rt.waitForServices();
  await rt.history.migrate();
  await rt.scheduler.sync();
  startWorkers(rt, opts.only);
  return rt;
}

/** The server role; resolves with the runtime and the port it listens on (PORT=0 picks a free one). */
export async function runServerProcess(opts: { withWorkers?: boolean } = {}): Promise<{ rt: Runtime; port: number }> {
  // Refused before a connection to Redis or PostgreSQL is even opened.
  const config = loadConfig();
  requireServerAuth(config);
  const rt = createRuntime({ config });
  onSignals(rt);
  try {
    await rt.waitForServices();
    if (opts.withWorkers) startWorkers(rt);
    const { port } = await startServer(rt);
    return { rt, port };
  } catch (err) {
    // Workers already started, and the demo's own servers (afterClose), stop before the exit.
    await rt.close();
    throw err;
  }
}

/** The alert monitor alone, for deployments whose server shares a machine with workers. */
export async function runMonitorProcess(): Promise<Runtime> {
  const rt = createRuntime();
  onSignals(rt);
  await rt.waitForServices();
  await rt.history.migrate();
  startMonitor(rt);
  rt.logger.info({ intervalMs: rt.config.alerts.intervalMs }, 'alert monitor started');
  return rt;
}
