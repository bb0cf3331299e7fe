// One BullMQ queue per job kind, named after the job. Enqueueing validates the
// payload first, so nothing unparseable ever reaches Redis, and answers within
// ENQUEUE_BUDGET_MS: an enqueue refused for want of Redis is never carried out later
// (add-deadline.ts).
import { createHash } from 'node:crypto';
import { Queue, type Job, type JobsOptions, type QueueOptions } from 'bullmq';
import type { Config } from '../core/config.ts';
import { ServiceUnavailableError } from '../core/errors.ts';
import {
  ADD_ANSWER_MARGIN_MS,
  ADD_GATE_MS,
  ENQUEUE_BUDGET_MS,
  installAddDeadline,
  redisNow,
  refusedAsLate,
} from './add-deadline.ts';
import type { RedisClient } from './connections.ts';
import { repeatStrategy } from '../core/cron.ts';
import { redisFailure, redisLabel, settleWithin } from './redis-failure.ts';
import { canonicalPayload, type ParsedPayload, type Registry, type RegisteredJob } from './registry.ts';
import { installWriteDeadline } from './write-deadline.ts';

export interface JobData {
  payload: Record<string, unknown> & { target: string };
  /** "ad-hoc" or "schedule:<id>". */
  trigger: string;
  scheduleId?: string;
}

export interface EnqueueOutcome {
  job: Job<JobData>;
  /** True when an identical request already waiting or running was returned. */
  existing: boolean;
  /** Why the request was merged into that job. */
  reason?: string;
}

export function jobOptions(config: Config, job: RegisteredJob): JobsOptions {
  return {
    attempts: job.run.attempts,
    backoff: { type: 'exponential', delay: job.run.backoffMs, jitter: 0.5 },
    removeOnComplete: { count: config.worker.keepCompleted },
    removeOnFail: { count: config.worker.keepFailed },
  };
}

/**
 * A job kind's queue whose adds carry their deadline (add-deadline.ts): `add` (ours, and
 * Bull Board's) stamps the job with Redis's clock and answers within ENQUEUE_BUDGET_MS. A
 * refusal is a ServiceUnavailableError that says whether anything can have been enqueued.
 */
export class JobQueue extends Queue<JobData> {
  private readonly redisConnection: RedisClient;

  constructor(
    name: string,
    opts: QueueOptions & { connection: RedisClient },
    /** How messages name Redis ("Redis (REDIS_URL …)"). */
    private readonly redis: string,
  ) {
    super(name, opts);
    this.redisConnection = opts.connection;
  }

  /** A refusal before the add was carried out: nothing was, nor will be, enqueued. */
  nothingEnqueued(why: string): ServiceUnavailableError {
    return new ServiceUnavailableError(`${this.redis} ${why}; nothing was enqueued, try again`);
  }

  /** Adds the job, or refuses by `giveUpAt`; the add reaches Redis only with a stamp taken moments before. */
  async addBefore(giveUpAt: number, name: string, data: JobData, opts: JobsOptions = {}): Promise<Job<JobData>> {
    const answerWithin = ADD_GATE_MS + ADD_ANSWER_MARGIN_MS;
    const timedOut = (seconds: number) => () => this.nothingEnqueued(`did not answer within ${seconds} s`);
    const stampWithin = giveUpAt - Date.now() - answerWithin;
    if (stampWithin <= 0) throw this.nothingEnqueued(`answered too slowly to add within ${ENQUEUE_BUDGET_MS / 1000} s`);
    const stamp = await settleWithin(
      redisNow(this.redisConnection, this.keys.meta!),
      stampWithin,
      timedOut(Math.round(stampWithin / 100) / 10),
    ).catch((err: unknown) => {
      throw err instanceof ServiceUnavailableError ? err : this.nothingEnqueued(redisFailure(err) ?? String(err));
    });
    const added = super.addJob(name, data, { ...opts, timestamp: stamp });
    return settleWithin(added, answerWithin, timedOut(answerWithin / 1000)).catch((err: unknown) => {
      throw this.addFailure(err);
    });
  }

  protected override addJob(name: string, data: JobData, opts?: JobsOptions): Promise<Job<JobData>> {
    return this.addBefore(Date.now() + ENQUEUE_BUDGET_MS, name, data, opts);
  }

  /** Why an add that was sent failed, and whether it can have been enqueued. */
  private addFailure(err: unknown): Error {
    if (err instanceof ServiceUnavailableError) return err;
    if (refusedAsLate(err)) return this.nothingEnqueued('ran the add after its deadline and refused it');
    const failure = redisFailure(err);
    // A command that timed out was sent after the stamp came back: Redis's deadline passed first.
    if (failure && /timed out|enableOfflineQueue options is false/.test((err as Error).message))
      return this.nothingEnqueued(failure);
    if (failure) {
      return new ServiceUnavailableError(
        `${this.redis} closed the connection while the job was being added: it may have been enqueued; look in ` +
          'Bull Board or the run history before trying again',
      );
    }
    return err instanceof Error ? err : new Error(String(err));
  }
}

export class Queues {
  private readonly queues = new Map<string, JobQueue>();

  constructor(
    readonly config: Config,
    readonly registry: Registry,
    readonly connection: RedisClient,
    /** bounded: a connection someone waits on (the API, the board); its other changes carry a deadline too. */
    mode: 'bounded' | 'patient' = 'patient',
  ) {
    // Before any queue on the connection loads BullMQ's scripts: its adds carry their deadline,
    // and on a bounded connection every change does (write-deadline.ts).
    installAddDeadline(connection);
    if (mode === 'bounded') installWriteDeadline(connection, redisLabel(config));
  }

  get(name: string): JobQueue {
    let q = this.queues.get(name);
    if (!q) {
      if (!this.registry.get(name)) throw new Error(`unknown job "${name}"`);
      q = new JobQueue(
        name,
        {
          connection: this.connection,
          prefix: this.config.redis.prefix,
          settings: { repeatStrategy },
          // The events stream only feeds live listeners (`enqueue --wait`); BullMQ's default
          // of 10,000 entries per queue would be most of an idle runner's Redis memory.
          streams: { events: { maxLen: 1000 } },
        },
        redisLabel(this.config),
      );
      q.on('error', () => undefined); // connection errors surface through readiness
      this.queues.set(name, q);
    }
    return q;
  }

  all(): JobQueue[] {
    return this.registry.names().map((n) => this.get(n));
  }

  /**
   * Validates and enqueues an ad-hoc run. For jobs that deduplicate, an identical
   * request (same payload after defaults) while one waits or runs gets that job back,
   * with the reason; a request that differs in any field is a job of its own. Answers
   * within ENQUEUE_BUDGET_MS; a ServiceUnavailableError says whether anything was enqueued.
   */
  async enqueue(name: string, rawPayload: unknown, opts: { trigger?: string } = {}): Promise<EnqueueOutcome> {
    if (!this.registry.get(name)) throw new Error(`unknown job "${name}"`);
    return this.enqueueParsed(name, this.registry.parsePayload(name, rawPayload), opts);
  }

  /**
   * Enqueues one run per payload (a fleet request, already parsed and checked whole by
   * Registry.parseRequest), a few at a time. Each target's outcome is its own: a job, a
   * merge into an identical one, or the refusal that says whether it was enqueued.
   */
  async enqueueEach(
    name: string,
    payloads: readonly ParsedPayload[],
    opts: { trigger?: string } = {},
  ): Promise<({ target: string } & ({ outcome: EnqueueOutcome } | { error: Error }))[]> {
    const results: ({ target: string } & ({ outcome: EnqueueOutcome } | { error: Error }))[] = [];
    let next = 0;
    const lane = async () => {
      while (next < payloads.length) {
        const i = next++;
        const payload = payloads[i]!;
        results[i] = await this.enqueueParsed(name, payload, opts).then(
          (outcome) => ({ target: payload.target, outcome }),
          (err: unknown) => ({ target: payload.target, error: err instanceof Error ? err : new Error(String(err)) }),
        );
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, payloads.length) }, lane));
    return results;
  }

  private async enqueueParsed(
    name: string,
    payload: ParsedPayload,
    opts: { trigger?: string },
  ): Promise<EnqueueOutcome> {
    const registered = this.registry.get(name)!;
    const giveUpAt = Date.now() + ENQUEUE_BUDGET_MS;
    const queue = this.get(name);
    const data: JobData = { payload, trigger: opts.trigger ?? 'ad-hoc' };
    const jobOpts: JobsOptions = { ...jobOptions(this.config, registered) };
    if (!registered.def.deduplicate)
      return { job: await queue.addBefore(giveUpAt, name, data, jobOpts), existing: false };

    // The reads before the add leave it the time it needs.
    const read = <T>(p: Promise<T>): Promise<T> => {
      const within = giveUpAt - ADD_GATE_MS - ADD_ANSWER_MARGIN_MS - Date.now();
      return settleWithin(p, within, () =>
        queue.nothingEnqueued(`did not answer within ${ENQUEUE_BUDGET_MS / 1000} s`),
      ).catch((err: unknown) => {
        throw err instanceof ServiceUnavailableError || !redisFailure(err)
          ? err
          : queue.nothingEnqueued(redisFailure(err)!);
      });
    };
    const dedupId = `${name}:${createHash('sha256').update(canonicalPayload(payload)).digest('hex').slice(0, 32)}`;
    jobOpts.deduplication = { id: dedupId };
    const merged = async (id: string | null | undefined): Promise<EnqueueOutcome | undefined> => {
      const held = id ? await read(queue.getJob(id)) : undefined;
      if (!held) return undefined;
      const state = await read(held.getState());
      return {
        job: held,
        existing: true,
        reason: `an identical ${name} request (same payload) is already ${state} as job ${held.id}`,
      };
    };
    const early = await merged(await read(queue.getDeduplicationJobId(dedupId)));
    if (early) return early;
    // Two identical requests racing past the check above still meet in Redis: the
    // deduplicated add answers with the job that holds the key (reported as new).
    return { job: await queue.addBefore(giveUpAt, name, data, jobOpts), existing: false };
  }

  async close(): Promise<void> {
    for (const q of [...this.queues.values()].reverse()) await q.close().catch(() => undefined);
    this.queues.clear();
  }
}
