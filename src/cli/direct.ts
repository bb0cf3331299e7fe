// The direct mode, for the database host: the commands read and write Redis and
// PostgreSQL themselves (DATABASE_URL, REDIS_URL, …), through the API's own handlers run
// in this process, so they print what the API answers. It bypasses the API's tokens,
// roles and rate limit. A refusal is decided before Redis or PostgreSQL is asked anything;
// then each command checks only what it reads, and every answer comes within seconds or the
// command exits 3 naming what did not answer (direct-services.ts).
import { QueueEvents } from 'bullmq';
import { ConfigError, ServiceUnavailableError, UsageError } from '../core/errors.ts';
import { waitAtMost } from '../core/wait-at-most.ts';
import { Auth } from '../http/auth.ts';
import {
  enqueueJob,
  type Handler,
  type HttpDeps,
  listBackups,
  listHistory,
  listSchedules,
  status,
} from '../http/handlers.ts';
import type { Runtime } from '../runner/runtime.ts';
import { createRuntime } from '../pgmaint.ts';
import {
  answerError,
  type BackupsAnswer,
  type Client,
  type Enqueued,
  type EnqueueAnswer,
  type FleetEnqueueAnswer,
  type HistoryAnswer,
  type JobsAnswer,
  type SchedulesAnswer,
  type StatusAnswer,
  type HoldRequest,
  type ResumeAnswer,
  type ThrottleAnswer,
  stillRuns,
} from './client.ts';
import { followRun } from './direct-follow.ts';
import { type Service, Services } from './direct-services.ts';
import { err } from './terminal.ts';

const NOTHING_ENQUEUED = '; nothing was enqueued, try again';

export class DirectClient implements Client {
  private runtime?: Runtime;
  private readonly services = new Services(() => this.rt);
  private readonly closers: (() => Promise<void>)[] = [];

  /** Created on first use: `jobs` needs no configuration. */
  private get rt(): Runtime {
    try {
      this.runtime ??= createRuntime();
    } catch (err) {
      // On a laptop the missing DATABASE_URL is a sign of the wrong mode.
      if (err instanceof ConfigError)
        throw new ConfigError(
          `${err.message} (the direct mode; to go through a pgmaint server, set PGMAINT_URL and PGMAINT_TOKEN)`,
        );
      throw err;
    }
    return this.runtime;
  }

  async status(): Promise<StatusAnswer> {
    // Loaded here, not for every command: `enqueue` starts sooner without them.
    const [{ AlertMonitor }, { HealthReader }, { storedOrReading }] = await Promise.all([
      import('../monitoring/alerts.ts'),
      import('../monitoring/health.ts'),
      import('../monitoring/sampler.ts'),
    ]);
    await this.services.check('redis');
    // The snapshot a server's sampler keeps in Redis (no target is connected to); without one, a reading here.
    // Open alerts are what the running monitor (server or `pgmaint monitor`) recorded in Redis.
    const health = new HealthReader(this.rt);
    const snapshots = await this.services.within(
      ['redis'],
      storedOrReading(this.rt, health, (line) => err(`pgmaint: ${line}\n`)),
    );
    // The report itself is partial rather than absent: what it could not read, Redis's parts among them, it names.
    return this.call('status', status, undefined, {
      health: snapshots,
      monitor: new AlertMonitor(this.rt, health, undefined),
    });
  }

  async schedules(): Promise<SchedulesAnswer> {
    await this.services.check('redis', 'postgres');
    return this.call('schedules', listSchedules, ['redis', 'postgres']);
  }

  /** The run history is in PostgreSQL only: Redis is not asked. */
  async history({ job, limit }: { job?: string; limit: number }): Promise<HistoryAnswer> {
    if (job !== undefined && !this.rt.registry.get(job))
      throw new UsageError(`--job: ${this.rt.registry.unknownJob(job)}`);
    await this.services.check('postgres');
    return this.call('history', listHistory, ['postgres'], {}, { query: { job, limit: String(limit) } });
  }

  /** The job files' catalog with their own run settings: no configuration is read. */
  async jobs(): Promise<JobsAnswer> {
    const { jobs } = await import('../../jobs/index.ts');
    return { jobs: jobs.map((j) => ({ name: j.name, description: j.description, defaults: j.defaults })) };
  }

  async backups(target: string | undefined): Promise<BackupsAnswer> {
    const targets = [...this.rt.config.targets.keys()];
    if (target !== undefined && !targets.includes(target))
      throw new UsageError(`backups: unknown target "${target}" (known: ${targets.join(', ')})`);
    await this.services.check('postgres');
    // Not held to a deadline as a whole: the bucket has its own (objectStore.requestTimeoutMs).
    return this.call('backups', listBackups, undefined, {}, { query: { target } });
  }

  async enqueueMany(name: string, data: object): Promise<FleetEnqueueAnswer> {
    if (!this.rt.registry.get(name)) throw new UsageError(`enqueue: ${this.rt.registry.unknownJob(name)}`);
    this.rt.registry.parseRequest(name, data);
    await this.services.check('redis');
    return this.call('enqueue', enqueueJob, ['redis'], {}, { params: { name }, body: data });
  }

  async enqueue(name: string, data: unknown, follow?: (progress: unknown) => void): Promise<Enqueued> {
    const { rt } = this;
    if (!rt.registry.get(name)) throw new UsageError(`enqueue: ${rt.registry.unknownJob(name)}`);
    rt.registry.parsePayload(name, data);
    await this.services.check('redis');
    const add = () => this.call<EnqueueAnswer>('enqueue', enqueueJob, ['redis'], {}, { params: { name }, body: data });
    if (!follow) return { answer: await add() };
    // Read the events stream from a minute back, not from "now": a fast job's first
    // progress events can land before the listener's first read. Events are filtered
    // by job id, so replaying older ones is harmless (the margin covers clock skew).
    const events = new QueueEvents(name, {
      connection: rt.connections.redis('pgmaint-cli-events'),
      prefix: rt.config.redis.prefix,
      lastEventId: `${Date.now() - 60_000}-0`,
    });
    // Closing waits for Redis to answer, and a frozen one never does: it gets a second at most.
    this.closers.push(async () => void (await waitAtMost(events.close(), 1000)));
    events.on('error', () => undefined);
    // Progress events are collected from before the enqueue (a fast job reports while
    // the enqueue is still answering) and passed on for this job once its id is known.
    const early: { jobId: string; progress: unknown }[] = [];
    let ours: string | undefined;
    events.on('progress', ({ jobId, data: progress }) => {
      if (ours === undefined) early.push({ jobId, progress });
      else if (jobId === ours) follow(progress);
    });
    await this.services.within(['redis'], events.waitUntilReady(), NOTHING_ENQUEUED, { heartbeat: true });
    const answer = await add();
    const end = () => {
      ours = answer.id;
      for (const e of early) if (e.jobId === ours) follow(e.progress);
      const lost = ` while following the run: ${stillRuns(answer)}`;
      return followRun(rt.queues.get(answer.queue), answer.id, events, (p) => this.services.within(['redis'], p, lost));
    };
    return { answer, end };
  }

  async throttle(req: HoldRequest & { for?: string; reason?: string }): Promise<ThrottleAnswer> {
    const { throttle } = await import('../http/governor-handlers.ts');
    await this.services.check('redis');
    return this.call('throttle', throttle, ['redis'], {}, { body: req });
  }

  async resume(req: HoldRequest): Promise<ResumeAnswer> {
    const { resume } = await import('../http/governor-handlers.ts');
    await this.services.check('redis');
    return this.call('resume', resume, ['redis'], {}, { body: req });
  }

  async close(): Promise<void> {
    for (const close of this.closers.splice(0).reverse()) await close();
    await this.runtime?.close();
  }

  /**
   * Runs an API handler here, as the admin; its body comes back as JSON would carry it. With
   * `services`, its answer comes within seconds or the command exits 3 naming which did not answer.
   */
  private async call<T>(
    action: string,
    handler: Handler,
    services: Service[] | undefined,
    parts: Partial<HttpDeps> = {},
    req: { params?: Record<string, string>; query?: Record<string, string | undefined>; body?: unknown } = {},
  ): Promise<T> {
    const deps: HttpDeps = { rt: this.rt, auth: new Auth(undefined, undefined), ...parts };
    const query = Object.fromEntries(Object.entries(req.query ?? {}).filter(([, v]) => v !== undefined));
    const answered = handler(deps, { params: req.params ?? {}, query, body: req.body, role: 'admin', secure: false });
    const consequence = action === 'enqueue' ? NOTHING_ENQUEUED : '';
    const res = services
      ? await this.services.within(services, answered, consequence)
      : await answered.catch((e: unknown) => {
          throw this.services.explain(e, ['redis', 'postgres']);
        });
    // The handler's 503 says what did not answer, and what that means, in the API's words.
    if (res.status === 503) throw new ServiceUnavailableError(String((res.body as { error?: unknown }).error));
    if (res.status >= 300) throw answerError(res.status, res.body, 'pgmaint (direct)', action);
    return JSON.parse(JSON.stringify(res.body)) as T;
  }
}
