// Schedules are data (schedules/index.ts). On start every process upserts them into
// BullMQ job schedulers, keyed by the schedule id, so N processes converge on one
// scheduler per id; schedulers whose id left the code are removed.
import { DateTime, IANAZone } from 'luxon';
import { ConfigError } from '../core/errors.ts';
import { nextRun, parseCron } from '../core/cron.ts';
import type { Logger } from '../core/logger.ts';
import type { Queues, JobData } from './queues.ts';
import { jobOptions } from './queues.ts';
import type { Registry } from './registry.ts';

export interface Schedule {
  /** Stable id: the BullMQ job scheduler id. Changing it creates a new schedule. */
  id: string;
  job: string;
  cron: string;
  /** IANA time zone the cron is read in. */
  tz: string;
  payload?: Record<string, unknown>;
  /** After downtime: 'latest' runs the missed run once on return, 'none' skips it. */
  catchUp?: 'none' | 'latest';
  /** 'skip': a run never starts while the previous run of this schedule is active. */
  overlap?: 'skip' | 'allow';
}

export type ResolvedSchedule = Required<Schedule> & { payload: JobData['payload'] };

const SCHEDULE_ID = /^[a-z0-9][a-z0-9_.-]{0,99}$/;

/** Validates schedules against the registry; the error names the schedule and field. */
export function resolveSchedules(
  schedules: readonly Schedule[],
  registry: Registry,
  disabled: readonly string[] = [],
): ResolvedSchedule[] {
  const ids = schedules.map((s) => s.id);
  disabled.forEach((id, i) => {
    // An unknown id would leave the real schedule on while the file says it is off.
    if (!ids.includes(id))
      throw new ConfigError(`scheduler.disabled.${i}: no schedule "${id}" (known: ${ids.join(', ') || 'none'})`);
  });
  const seen = new Set<string>();
  const out: ResolvedSchedule[] = [];
  for (const s of schedules) {
    const where = `schedule "${s.id}"`;
    if (!SCHEDULE_ID.test(s.id)) throw new ConfigError(`${where}: id must be lower-case letters, digits, _ . -`);
    if (seen.has(s.id)) throw new ConfigError(`${where}: id is used twice`);
    seen.add(s.id);
    if (!registry.get(s.job)) throw new ConfigError(`${where}: job "${s.job}" does not exist`);
    if (!IANAZone.isValidZone(s.tz)) throw new ConfigError(`${where}: tz "${s.tz}" is not an IANA time zone`);
    try {
      parseCron(s.cron);
    } catch (err) {
      throw new ConfigError(`${where}: ${(err as Error).message}`);
    }
    let payload: JobData['payload'];
    try {
      payload = registry.parsePayload(s.job, s.payload ?? {});
    } catch (err) {
      throw new ConfigError(`${where}: ${(err as Error).message}`);
    }
    if (disabled.includes(s.id)) continue;
    out.push({ ...s, payload, catchUp: s.catchUp ?? 'latest', overlap: s.overlap ?? 'skip' });
  }
  return out;
}

export class Scheduler {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly queues: Queues,
    private readonly registry: Registry,
    private readonly schedules: readonly ResolvedSchedule[],
    private readonly logger: Logger,
  ) {}

  private async upsert(s: ResolvedSchedule): Promise<void> {
    const registered = this.registry.get(s.job)!;
    const data: JobData = { payload: s.payload, trigger: `schedule:${s.id}`, scheduleId: s.id };
    await this.queues
      .get(s.job)
      .upsertJobScheduler(
        s.id,
        { pattern: s.cron, tz: s.tz },
        { name: s.job, data, opts: jobOptions(this.queues.config, registered) },
      );
  }

  /** Upserts every schedule and removes schedulers that are no longer in the code. */
  async sync(): Promise<{ upserted: string[]; removed: string[] }> {
    const wanted = new Map(this.schedules.map((s) => [s.id, s]));
    const removed: string[] = [];
    for (const queue of this.queues.all()) {
      for (const existing of await queue.getJobSchedulers(0, -1)) {
        const id = existing.key;
        if (wanted.get(id)?.job !== queue.name) {
          await queue.removeJobScheduler(id);
          removed.push(`${queue.name}/${id}`);
        }
      }
    }
    for (const s of this.schedules) await this.upsert(s);
    this.logger.info({ upserted: this.schedules.length, removed }, 'schedules synced');
    return { upserted: this.schedules.map((s) => s.id), removed };
  }

  /**
   * Repairs a schedule whose next run is due with no job waiting for it (a deleted
   * delayed job, a lost Redis write): the scheduler is upserted again.
   */
  async watchdog(now = Date.now(), graceMs = 60_000): Promise<string[]> {
    const repaired: string[] = [];
    for (const s of this.schedules) {
      const queue = this.queues.get(s.job);
      const scheduler = await queue.getJobScheduler(s.id);
      let healthy = false;
      if (scheduler?.next !== undefined) {
        if (scheduler.next > now - graceMs) healthy = true;
        else {
          // Overdue: fine while its job waits for a worker, broken if the job is gone.
          const pending = await queue.getJob(`repeat:${s.id}:${scheduler.next}`);
          const state = pending ? await pending.getState() : 'unknown';
          healthy = ['delayed', 'waiting', 'prioritized', 'active'].includes(state);
        }
      }
      if (!healthy) {
        await queue.removeJobScheduler(s.id);
        await this.upsert(s);
        repaired.push(s.id);
        this.logger.warn({ schedule: s.id, next: scheduler?.next }, 'schedule had no pending run; repaired');
      }
    }
    return repaired;
  }

  startWatchdog(intervalMs: number): void {
    this.timer = setInterval(() => {
      this.watchdog().catch((err) => this.logger.error({ err }, 'schedule watchdog failed'));
    }, intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Each schedule with its next runs in its own time zone and what Redis holds. */
  async describe(now = Date.now()): Promise<object[]> {
    return Promise.all(
      this.schedules.map(async (s) => {
        const scheduler = await this.queues.get(s.job).getJobScheduler(s.id);
        const next = nextRun(s.cron, s.tz, now);
        return {
          id: s.id,
          job: s.job,
          cron: s.cron,
          tz: s.tz,
          catchUp: s.catchUp,
          overlap: s.overlap,
          payload: s.payload,
          nextRun: DateTime.fromMillis(next, { zone: s.tz }).toISO(),
          nextRunUtc: new Date(next).toISOString(),
          scheduledInRedis: scheduler?.next !== undefined ? new Date(scheduler.next).toISOString() : null,
        };
      }),
    );
  }
}
