// One BullMQ queue per job kind, named after the job. Enqueueing validates the
// payload first, so nothing unparseable ever reaches Redis.
import { createHash } from 'node:crypto';
import { Queue, type Job, type JobsOptions } from 'bullmq';
import type { Config } from '../core/config.ts';
import type { RedisClient } from './connections.ts';
import { repeatStrategy } from '../core/cron.ts';
import { canonicalPayload, type Registry, type RegisteredJob } from './registry.ts';

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

export class Queues {
  private readonly queues = new Map<string, Queue<JobData>>();

  constructor(
    readonly config: Config,
    readonly registry: Registry,
    readonly connection: RedisClient,
  ) {}

  get(name: string): Queue<JobData> {
    let q = this.queues.get(name);
    if (!q) {
      if (!this.registry.get(name)) throw new Error(`unknown job "${name}"`);
      q = new Queue<JobData>(name, {
        connection: this.connection,
        prefix: this.config.redis.prefix,
        settings: { repeatStrategy },
        // The events stream only feeds live listeners (`enqueue --wait`); BullMQ's default
        // of 10,000 entries per queue would be most of an idle runner's Redis memory.
        streams: { events: { maxLen: 1000 } },
      });
      q.on('error', () => undefined); // connection errors surface through readiness
      this.queues.set(name, q);
    }
    return q;
  }

  all(): Queue<JobData>[] {
    return this.registry.names().map((n) => this.get(n));
  }

  /**
   * Validates and enqueues an ad-hoc run. For jobs that deduplicate, an identical
   * request (same payload after defaults) while one waits or runs gets that job back,
   * with the reason; a request that differs in any field is a job of its own.
   */
  async enqueue(name: string, rawPayload: unknown, opts: { trigger?: string } = {}): Promise<EnqueueOutcome> {
    const registered = this.registry.get(name);
    if (!registered) throw new Error(`unknown job "${name}"`);
    const payload = this.registry.parsePayload(name, rawPayload);
    const queue = this.get(name);
    const data: JobData = { payload, trigger: opts.trigger ?? 'ad-hoc' };
    const jobOpts: JobsOptions = { ...jobOptions(this.config, registered) };
    if (!registered.def.deduplicate) return { job: await queue.add(name, data, jobOpts), existing: false };

    const dedupId = `${name}:${createHash('sha256').update(canonicalPayload(payload)).digest('hex').slice(0, 32)}`;
    jobOpts.deduplication = { id: dedupId };
    const merged = async (id: string | null | undefined): Promise<EnqueueOutcome | undefined> => {
      const held = id ? await queue.getJob(id) : undefined;
      if (!held) return undefined;
      const state = await held.getState();
      return {
        job: held,
        existing: true,
        reason: `an identical ${name} request (same payload) is already ${state} as job ${held.id}`,
      };
    };
    const early = await merged(await queue.getDeduplicationJobId(dedupId));
    if (early) return early;
    // Two identical requests racing past the check above still meet in Redis: the
    // deduplicated add answers with the job that holds the key (reported as new).
    return { job: await queue.add(name, data, jobOpts), existing: false };
  }

  async close(): Promise<void> {
    for (const q of [...this.queues.values()].reverse()) await q.close().catch(() => undefined);
    this.queues.clear();
  }
}
