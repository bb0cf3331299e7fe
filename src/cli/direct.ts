// The direct mode, for the database host: the commands read and write Redis and
// PostgreSQL themselves (DATABASE_URL, REDIS_URL, …), through the API's own handlers run
// in this process, so they print what the API answers. It bypasses the API's tokens,
// roles and rate limit. A refusal is decided before Redis or PostgreSQL is asked anything;
// then the services must answer within seconds, or the command exits 3 naming the variable.
import { QueueEvents } from 'bullmq';
import { ConfigError, UsageError } from '../core/errors.ts';
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
import { AlertMonitor } from '../monitoring/alerts.ts';
import { HealthReader } from '../monitoring/health.ts';
import { storedOrReading } from '../monitoring/sampler.ts';
import type { Runtime } from '../runner/runtime.ts';
import { createRuntime } from '../pgmaint.ts';
import {
  answerError,
  type BackupsAnswer,
  type Client,
  type Enqueued,
  type EnqueueAnswer,
  type HistoryAnswer,
  type JobEnd,
  type JobsAnswer,
  type SchedulesAnswer,
  type StatusAnswer,
} from './client.ts';

type Service = 'redis' | 'postgres';

export class DirectClient implements Client {
  private runtime?: Runtime;
  private readonly checked = new Set<Service>();
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
    await this.need('redis');
    // The snapshot a server's sampler keeps in Redis (no target is connected to); without one, a reading here.
    // Open alerts are what the running monitor (server or `pgmaint monitor`) recorded in Redis.
    const health = new HealthReader(this.rt);
    const snapshots = await storedOrReading(this.rt, health, (line) => process.stderr.write(`pgmaint: ${line}\n`));
    return this.call('status', status, { health: snapshots, monitor: new AlertMonitor(this.rt, health, undefined) });
  }

  async schedules(): Promise<SchedulesAnswer> {
    await this.need('redis', 'postgres');
    return this.call('schedules', listSchedules);
  }

  async history({ job, limit }: { job?: string; limit: number }): Promise<HistoryAnswer> {
    if (job !== undefined && !this.rt.registry.get(job))
      throw new UsageError(`--job: ${this.rt.registry.unknownJob(job)}`);
    await this.need('redis', 'postgres');
    return this.call('history', listHistory, {}, { query: { job, limit: String(limit) } });
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
    await this.need('postgres');
    return this.call('backups', listBackups, {}, { query: { target } });
  }

  async enqueue(name: string, data: unknown, follow?: (progress: unknown) => void): Promise<Enqueued> {
    const { rt } = this;
    if (!rt.registry.get(name)) throw new UsageError(`enqueue: ${rt.registry.unknownJob(name)}`);
    rt.registry.parsePayload(name, data);
    await this.need('redis');
    if (!follow) return { answer: await this.call('enqueue', enqueueJob, {}, { params: { name }, body: data }) };
    // Read the events stream from a minute back, not from "now": a fast job's first
    // progress events can land before the listener's first read. Events are filtered
    // by job id, so replaying older ones is harmless (the margin covers clock skew).
    const events = new QueueEvents(name, {
      connection: rt.connections.redis('pgmaint-cli-events'),
      prefix: rt.config.redis.prefix,
      lastEventId: `${Date.now() - 60_000}-0`,
    });
    this.closers.push(() => events.close());
    events.on('error', () => undefined);
    // Progress events are collected from before the enqueue (a fast job reports while
    // the enqueue is still answering) and passed on for this job once its id is known.
    const early: { jobId: string; progress: unknown }[] = [];
    let ours: string | undefined;
    events.on('progress', ({ jobId, data: progress }) => {
      if (ours === undefined) early.push({ jobId, progress });
      else if (jobId === ours) follow(progress);
    });
    await events.waitUntilReady();
    const answer: EnqueueAnswer = await this.call('enqueue', enqueueJob, {}, { params: { name }, body: data });
    const end = async (): Promise<JobEnd> => {
      ours = answer.id;
      for (const e of early) if (e.jobId === ours) follow(e.progress);
      const queue = rt.queues.get(answer.queue);
      const job = await queue.getJob(answer.id);
      if (!job) throw new Error(`${answer.queue} job ${answer.id} is gone from Redis before it could be followed`);
      try {
        return { id: answer.id, state: 'completed', result: await job.waitUntilFinished(events) };
      } catch (err) {
        const failed = await queue.getJob(answer.id);
        return {
          id: answer.id,
          state: 'failed',
          failedReason: failed?.failedReason ?? (err as Error).message,
          attemptsMade: failed?.attemptsMade,
        };
      }
    };
    return { answer, end };
  }

  async close(): Promise<void> {
    for (const close of this.closers.splice(0).reverse()) await close();
    await this.runtime?.close();
  }

  /** Redis (and, for the run history, its database) answer within seconds, once per command. */
  private async need(...services: Service[]): Promise<void> {
    for (const s of services) {
      if (this.checked.has(s)) continue;
      await (s === 'redis' ? this.rt.checkRedis() : this.rt.checkPostgres());
      this.checked.add(s);
    }
  }

  /** Runs an API handler here, as the admin; its body comes back as JSON would carry it. */
  private async call<T>(
    action: string,
    handler: Handler,
    parts: Partial<HttpDeps> = {},
    req: { params?: Record<string, string>; query?: Record<string, string | undefined>; body?: unknown } = {},
  ): Promise<T> {
    const deps: HttpDeps = { rt: this.rt, auth: new Auth(undefined, undefined), ...parts };
    const query = Object.fromEntries(Object.entries(req.query ?? {}).filter(([, v]) => v !== undefined));
    const res = await handler(deps, {
      params: req.params ?? {},
      query,
      body: req.body,
      role: 'admin',
      secure: false,
    });
    if (res.status >= 300) throw answerError(res.status, res.body, 'pgmaint (direct)', action);
    return JSON.parse(JSON.stringify(res.body)) as T;
  }
}
