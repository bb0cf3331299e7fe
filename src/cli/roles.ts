// Long-running process roles with their signal handling. SIGTERM/SIGINT: stop
// taking jobs, finish or abort the current ones within worker.shutdownTimeoutMs,
// then close the HTTP server, queues and pools in reverse order of start-up.
import os from 'node:os';
import { ConfigError, UsageError } from '../core/errors.ts';
import { backupDirOf, loadConfig } from '../core/config.ts';
import { requireServerAuth, startMonitor, startServer } from '../http/server.ts';
import { describeLacks, lackingNeeds } from '../runner/needs.ts';
import type { Runtime } from '../runner/runtime.ts';
import { WorkerRuntime } from '../runner/worker.ts';
import { Governor } from '../governor/governor.ts';
import { createRuntime } from '../pgmaint.ts';

export function startWorkers(rt: Runtime, only?: string[]): WorkerRuntime {
  // The load governor answers within seconds or not at all: a bounded connection of its own.
  const redis = rt.connections.redis('pgmaint-governor', 'bounded');
  const governor = new Governor(rt.connections, redis, rt.logger, `${os.hostname()}:${process.pid}`);
  const workers = new WorkerRuntime({
    connections: rt.connections,
    registry: rt.registry,
    history: rt.history,
    logger: rt.logger,
    schedules: rt.schedules,
    only,
    governor,
  });
  workers.start();
  rt.onClose(async () => {
    await workers.close(rt.config.worker.shutdownTimeoutMs);
    await governor.close();
  });
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

/**
 * The queues a worker serves. Told which (`--queues`, or an entry point's list in workers/),
 * it refuses to start when this machine lacks a need of one of them, naming the need and the
 * variable (exit 2). Serving every job, it leaves the queues whose needs it lacks and says
 * which in a warning; the no-worker alert fires if no other worker serves them.
 */
async function queuesToServe(rt: Runtime, only: string[] | undefined, origin: string): Promise<string[] | undefined> {
  const names = only ?? rt.registry.names();
  const lacks = await lackingNeeds(
    names.map((name) => rt.registry.get(name)!.def),
    rt.config,
  );
  if (!lacks.length) return only;
  const said = describeLacks(lacks);
  if (only) throw new ConfigError(`${origin}: ${said}`);
  const left = new Set(lacks.map((l) => l.job));
  rt.logger.warn(
    { left: [...left], lacking: lacks.map((l) => ({ job: l.job, need: l.need, variable: l.variable })) },
    `not serving ${[...left].join(', ')}: ${said}`,
  );
  return names.filter((name) => !left.has(name));
}

/** `origin` names who chose `only` in a refusal: `--queues` (the default), or a workers/ entry point. */
export async function runWorkerProcess(opts: { only?: string[]; origin?: string } = {}): Promise<Runtime> {
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
  const queues = await queuesToServe(rt, opts.only, opts.origin ?? '--queues');
  onSignals(rt);
  await rt.waitForServices();
  await rt.history.migrate();
  await rt.scheduler.sync();
  startWorkers(rt, queues);
  return rt;
}

/** The server role; resolves with the runtime and the port it listens on (PORT=0 picks a free one). */
export async function runServerProcess(opts: { withWorkers?: boolean } = {}): Promise<{ rt: Runtime; port: number }> {
  // Refused before a connection to Redis or PostgreSQL is even opened.
  const config = loadConfig();
  requireServerAuth(config);
  backupDirOf(config); // the API and the alerts list backups there
  const rt = createRuntime({ config });
  onSignals(rt);
  try {
    await rt.waitForServices();
    if (opts.withWorkers) startWorkers(rt, await queuesToServe(rt, undefined, 'server'));
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
  const config = loadConfig();
  backupDirOf(config); // the alerts judge the backups listed there
  const rt = createRuntime({ config });
  onSignals(rt);
  await rt.waitForServices();
  await rt.history.migrate();
  startMonitor(rt);
  rt.logger.info({ intervalMs: rt.config.alerts.intervalMs }, 'alert monitor started');
  return rt;
}
