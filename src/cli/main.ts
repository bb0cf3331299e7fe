// The pgmaint command line. Long-running roles (server, worker, demo) keep the
// process alive; the others print and exit.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { QueueEvents } from 'bullmq';
import { DateTime } from 'luxon';
import { ConfigError, exitCodeFor, UsageError } from '../core/errors.ts';
import { redact } from '../core/redact.ts';
import { runMonitorProcess, runServerProcess, runWorkerProcess } from './roles.ts';
import type { Runtime } from '../runner/runtime.ts';
import { checkJobsAndSchedules, createRuntime } from '../pgmaint.ts';
import { ago, humanDuration, renderTable } from './table.ts';

const USAGE = `pgmaint — maintenance job runner for PostgreSQL

Usage:
  pgmaint server                         HTTP API, Bull Board, schedule sync and watchdog
  pgmaint worker [--queues a,b]          run jobs (all kinds unless --queues)
  pgmaint monitor                        alerts only (the server runs them too)
  pgmaint enqueue <job> [--data JSON] [--wait]
                                         enqueue a run; --wait prints progress, then the result
  pgmaint status [--json]                queues and workers, open alerts, backups, drill, archive lag,
                                         recovery window and partition runway, on one screen
  pgmaint schedules [--json]             schedules with their next and last runs
  pgmaint history [--job NAME] [--limit N] [--json]
                                         recent runs from the run history
  pgmaint demo [--dir DIR] [--scale S] [--offsite]
                                         local PostgreSQL + Redis + server + worker on the dairy database;
                                         --offsite: pgBackRest and dumps in a local S3 bucket, encrypted
  pgmaint seed [--scale small|default|large]   dairy schema and data into DATABASE_URL (if empty)
  pgmaint jobs [--json]                  the job catalog

Tables are for people; --json prints what the HTTP API answers (GET /api/status,
/api/schedules, /api/history), for scripts.

Configuration comes from the environment (DATABASE_URL, REDIS_URL, BACKUP_DIR, …)
and the optional PGMAINT_CONFIG file; see docs/configuration.md.`;

function print(obj: unknown): void {
  process.stdout.write(`${JSON.stringify(obj, null, 2)}\n`);
}

/** A runtime for one command; Redis (and, for commands that read the run history, its
 * database) must answer within seconds, or the command exits 3 naming the variable. */
async function withRuntime<T>(
  fn: (rt: Runtime) => Promise<T>,
  opts: { history?: boolean; validate?: (rt: Runtime) => void } = {},
): Promise<T> {
  const rt = createRuntime();
  try {
    // A refusal never waits on, or depends on, the services.
    opts.validate?.(rt);
    await rt.checkRedis();
    if (opts.history) await rt.checkPostgres();
    return await fn(rt);
  } finally {
    await rt.close();
  }
}

async function enqueue(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    'enqueue',
    args,
    { data: { type: 'string' }, wait: { type: 'boolean' } },
    true,
  );
  const name = positionals[0];
  if (!name) throw new UsageError('enqueue: a job name is required (pgmaint jobs lists them)');
  if (positionals.length > 1)
    throw new UsageError(
      `enqueue: one job at a time; unexpected ${positionals
        .slice(1)
        .map((p) => `"${p}"`)
        .join(' ')} (payload fields go in --data '{…}')`,
    );
  let data: unknown = {};
  if (values.data) {
    try {
      data = JSON.parse(values.data);
    } catch (err) {
      throw new UsageError(`--data: not valid JSON: ${(err as Error).message}`);
    }
  }
  // The job name and the payload are checked before Redis is asked anything: a refusal is exit 2 even
  // with Redis away.
  const validate = (rt: Runtime) => {
    if (!rt.registry.get(name)) throw new UsageError(`enqueue: ${rt.registry.unknownJob(name)}`);
    rt.registry.parsePayload(name, data);
  };
  return withRuntime(
    async (rt) => {
      const queue = rt.queues.get(name);
      // Read the events stream from a minute back, not from "now": a fast job's first
      // progress events can land before the listener's first read. Events are filtered
      // by job id, so replaying older ones is harmless (the margin covers clock skew).
      const events = values.wait
        ? new QueueEvents(name, {
            connection: rt.connections.redis('pgmaint-cli-events'),
            prefix: rt.config.redis.prefix,
            lastEventId: `${Date.now() - 60_000}-0`,
          })
        : undefined;
      events?.on('error', () => undefined);
      try {
        // Progress events are collected from before the enqueue (a fast job reports while
        // enqueue() is still answering) and printed for this job once its id is known.
        const early: { jobId: string; progress: unknown }[] = [];
        let ours: string | undefined;
        const printProgress = (progress: unknown) => process.stderr.write(`progress ${JSON.stringify(progress)}%\n`);
        events?.on('progress', ({ jobId, data: progress }) => {
          if (ours === undefined) early.push({ jobId, progress });
          else if (jobId === ours) printProgress(progress);
        });
        if (events) await events.waitUntilReady();
        const { job, existing, reason } = await rt.queues.enqueue(name, data, { trigger: 'ad-hoc' });
        process.stderr.write(existing ? `merged: ${reason}\n` : `enqueued: ${name} job ${job.id}\n`);
        if (!events) {
          print({ id: job.id, queue: job.queueName, name: job.name, existing, ...(reason ? { reason } : {}) });
          return 0;
        }
        ours = job.id;
        for (const e of early) if (e.jobId === ours) printProgress(e.progress);
        try {
          const result = await job.waitUntilFinished(events);
          print({ id: job.id, state: 'completed', result });
          return 0;
        } catch (err) {
          const failed = await queue.getJob(job.id!);
          print({
            id: job.id,
            state: 'failed',
            failedReason: failed?.failedReason ?? (err as Error).message,
            attemptsMade: failed?.attemptsMade,
          });
          return 1;
        }
      } finally {
        await events?.close();
      }
    },
    { validate },
  );
}

async function scaleArg(v: string) {
  const { SCALES } = await import('../dev/dairy.ts');
  if (!(v in SCALES)) throw new UsageError(`--scale: must be one of ${Object.keys(SCALES).join(', ')} (got "${v}")`);
  return v as keyof typeof SCALES;
}

/** Creates the dairy schema in DATABASE_URL and fills it (when its catalog is empty). */
async function seed(args: string[]): Promise<void> {
  const { values } = parseFlags('seed', args, { scale: { type: 'string', default: 'default' } });
  const scale = await scaleArg(values.scale!);
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

async function demo(args: string[]): Promise<void> {
  const { values } = parseFlags('demo', args, {
    dir: { type: 'string' },
    scale: { type: 'string', default: 'default' },
    offsite: { type: 'boolean' },
  });
  const scale = await scaleArg(values.scale!);
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

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'server':
        parseFlags('server', rest, {});
        await runServerProcess();
        return;
      case 'monitor':
        parseFlags('monitor', rest, {});
        await runMonitorProcess();
        return;
      case 'worker': {
        const { values } = parseFlags('worker', rest, { queues: { type: 'string' } });
        await runWorkerProcess({
          only: values.queues
            ?.split(',')
            .map((s) => s.trim())
            .filter(Boolean),
        });
        return;
      }
      case 'enqueue':
        process.exitCode = await enqueue(rest);
        return;
      case 'status': {
        const { values } = parseFlags('status', rest, { json: { type: 'boolean' } });
        await withRuntime(async (rt) => {
          const { statusTable, readStatus } = await import('./status.ts');
          const report = await readStatus(rt);
          if (values.json) print(report);
          else process.stdout.write(statusTable(report, rt.config.businessTimeZone));
        });
        return;
      }
      case 'schedules': {
        const { values } = parseFlags('schedules', rest, { json: { type: 'boolean' } });
        await withRuntime(
          async (rt) => {
            const schedules = await rt.describeSchedules();
            if (values.json) return print({ schedules });
            process.stdout.write(
              renderTable(
                ['ID', 'JOB', 'TARGET', 'CRON', 'ZONE', 'NEXT RUN (ZONE)', 'LAST', 'WHEN'],
                schedules.map((s) => [
                  s.id,
                  s.job,
                  s.target,
                  s.cron,
                  s.tz,
                  s.nextRun && DateTime.fromISO(s.nextRun, { setZone: true }).toFormat('yyyy-MM-dd HH:mm ZZ'),
                  s.lastRun?.outcome ?? 'never run',
                  ago(s.lastRun?.finishedAt),
                ]),
              ),
            );
          },
          { history: true },
        );
        return;
      }
      case 'history': {
        const { values } = parseFlags('history', rest, {
          job: { type: 'string' },
          limit: { type: 'string' },
          json: { type: 'boolean' },
        });
        const limit = values.limit ?? '20';
        if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000)
          throw new UsageError(`--limit: must be a whole number from 1 to 1000 (got "${limit}")`);
        const validate = (rt: Runtime) => {
          if (values.job !== undefined && !rt.registry.get(values.job))
            throw new UsageError(`--job: ${rt.registry.unknownJob(values.job)}`);
        };
        await withRuntime(
          async (rt) => {
            const runs = await rt.history.list({ job: values.job, limit: Number(limit) });
            if (values.json) return print({ runs });
            const zone = rt.config.businessTimeZone;
            process.stdout.write(
              renderTable(
                [`STARTED (${zone})`, 'JOB', 'TARGET', 'TRIGGER', 'OUTCOME', 'DURATION', 'ERROR'],
                runs.map((r) => [
                  DateTime.fromJSDate(r.started_at, { zone }).toFormat('yyyy-MM-dd HH:mm:ss'),
                  r.job,
                  r.target,
                  r.trigger,
                  r.outcome,
                  r.finished_at ? humanDuration((r.finished_at.getTime() - r.started_at.getTime()) / 1000) : 'running',
                  r.error,
                ]),
              ),
            );
          },
          { history: true, validate },
        );
        return;
      }
      case 'jobs': {
        const { values } = parseFlags('jobs', rest, { json: { type: 'boolean' } });
        const { jobs } = await import('../../jobs/index.ts');
        if (values.json) print(jobs.map((j) => ({ name: j.name, description: j.description, defaults: j.defaults })));
        else
          process.stdout.write(
            renderTable(
              ['JOB', 'WHAT IT DOES'],
              jobs.map((j) => [j.name, j.description]),
              200,
            ),
          );
        return;
      }
      case 'demo':
        await demo(rest);
        break;
      case 'seed':
        await seed(rest);
        return;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        return;
      default:
        throw new UsageError(
          `unknown command "${command}" (commands: server, worker, monitor, enqueue, status, schedules, history, ` +
            `demo, seed, jobs; pgmaint help shows usage)`,
        );
    }
  } catch (err) {
    process.stderr.write(`pgmaint: ${oneLine(err)}\n`);
    if (process.env.LOG_LEVEL === 'debug' || process.env.LOG_LEVEL === 'trace')
      process.stderr.write(`${(err as Error).stack ?? ''}\n`);
    process.exit(exitCodeFor(err));
  }
}

function oneLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return redact(message).replace(/\s*\n\s*/g, ' ');
}

type FlagSpec = Record<string, { type: 'string' | 'boolean'; default?: string }>;

/** node:util parseArgs, strict, with errors that say what to do instead. */
function parseFlags<T extends FlagSpec>(command: string, args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (err) {
    const message = (err as Error).message;
    const flag = /'(-{1,2}[^']+)'/.exec(message)?.[1];
    const known = Object.keys(options).map((o) => `--${o}`);
    if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag) {
      const hint =
        command === 'enqueue'
          ? `; payload fields go in --data, e.g. --data '{"${flag.replace(/^-+/, '').split('=')[0]}": …}'`
          : '';
      throw new UsageError(`${command}: unknown option ${flag} (known: ${known.join(', ') || 'none'})${hint}`);
    }
    if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL')
      throw new UsageError(`${command}: takes no arguments (${message.replace(/\. To specify.*$/, '')})`);
    throw new UsageError(`${command}: ${message}`);
  }
}
