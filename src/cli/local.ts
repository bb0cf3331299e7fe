// The commands that run on this machine only, with the services they start or fill:
// `demo` (a whole local stack) and `seed` (the dairy database). The process roles
// (server, worker, monitor) are in roles.ts.
import path from 'node:path';
import { ConfigError, UsageError } from '../core/errors.ts';
import { checkJobsAndSchedules } from '../pgmaint.ts';
import { runServerProcess } from './roles.ts';

async function scaleArg(v: string) {
  const { SCALES } = await import('../dev/dairy.ts');
  if (!(v in SCALES)) throw new UsageError(`--scale: must be one of ${Object.keys(SCALES).join(', ')} (got "${v}")`);
  return v as keyof typeof SCALES;
}

/** Creates the dairy schema in DATABASE_URL and fills it (when its catalog is empty). */
export async function seed(scaleName: string): Promise<void> {
  const scale = await scaleArg(scaleName);
  const url = process.env.DATABASE_URL;
  if (!url) throw new ConfigError('DATABASE_URL: is required (not set)');
  const { seedDairy } = await import('../dev/dairy.ts');
  const t0 = Date.now();
  const counts = await seedDairy(url, scale, {
    log: (m) => process.stderr.write(`${m}\n`),
    urlSource: 'DATABASE_URL',
  });
  process.stdout.write(`${JSON.stringify({ scale, seconds: (Date.now() - t0) / 1000, rows: counts }, null, 2)}\n`);
}

/** Whether something can listen on this port (on every interface, as the server does by default). */
async function portFree(port: number, host: string): Promise<boolean> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** PORT if it is free (refused, naming it, if not); else 3000, or a free port when 3000 is taken. */
async function demoPort(): Promise<number> {
  const host = process.env.HOST || '0.0.0.0';
  const asked = process.env.PORT;
  if (asked) {
    if (!/^\d{1,5}$/.test(asked) || Number(asked) > 65535)
      throw new ConfigError(`PORT: must be a port number from 0 to 65535 (got "${asked}")`);
    if (!(await portFree(Number(asked), host)))
      throw new ConfigError(
        `PORT: ${asked} is already in use on ${host}; choose another with PORT=…, or leave PORT unset for a free one`,
      );
    return Number(asked);
  }
  if (await portFree(3000, host)) return 3000;
  const { freePort } = await import('../dev/devstack.ts');
  const port = await freePort();
  process.stderr.write(`port 3000 is in use; the demo listens on ${port} instead (PORT=… chooses one)\n`);
  return port;
}

export async function demo(values: { dir?: string; scale?: string; offsite?: boolean }): Promise<void> {
  const scale = await scaleArg(values.scale ?? 'default');
  const { claimDemoDir, demoConfigFiles, startDemoStack } = await import('../dev/demo.ts');
  const dir = path.resolve(values.dir ?? '.pgmaint-demo');
  // Before anything starts: another demo in this directory, a mistake in PGMAINT_CONFIG or a
  // taken port must not leave a PostgreSQL and a Redis behind.
  claimDemoDir(dir);
  const configFiles = demoConfigFiles(dir, checkJobsAndSchedules);
  process.env.PORT = String(await demoPort());
  // Job logs are in Bull Board; the terminal keeps warnings, so the banner stays in view.
  process.env.LOG_LEVEL ||= 'warn';
  const stack = await startDemoStack(dir, scale, { offsite: values.offsite, configFiles });
  Object.assign(process.env, stack.env);
  let started: Awaited<ReturnType<typeof runServerProcess>>;
  try {
    started = await runServerProcess({ withWorkers: true });
  } catch (err) {
    await stack.stop().catch(() => undefined);
    throw err;
  }
  stack.announceStopOnSignals(started.rt.config.worker.shutdownTimeoutMs);
  started.rt.afterClose(() => stack.stop());
  process.stderr.write(stack.banner(`http://localhost:${started.port}`));
}
