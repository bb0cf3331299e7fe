// Schedules are data: the defaults (schedules/index.ts) with the config file's
// `schedules:` entries laid over them. On start they are written into BullMQ job
// schedulers, keyed by the schedule id, once per deployment (schedule-sync.ts);
// schedulers whose id left the list are removed. A schedule with a spread runs each
// target at its cron time plus the target's stable offset (core/spread.ts).
import { DateTime, IANAZone } from 'luxon';
import type { z } from 'zod';
import { SCHEDULE_ID, type scheduleEntrySchema } from '../core/config-schema.ts';
import { ConfigError, PayloadError } from '../core/errors.ts';
import { nextRun, nextSpreadRun, parseCron, shortestGapMs } from '../core/cron.ts';
import type { Logger } from '../core/logger.ts';
import { formatDuration, parseDuration, spreadOffsetMs } from '../core/spread.ts';
import type { LastRun } from './history.ts';
import type { Queues, JobData } from './queues.ts';
import { jobOptions } from './queues.ts';
import type { Registry } from './registry.ts';
import { type SchedulerWrite, type SyncResult, syncSchedules } from './schedule-sync.ts';

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
  /** Spread of a fleet's runs: each target runs at cron time + a stable offset in [0, spread) ("45m"). */
  spread?: string;
  /** Where it was declared, for messages: "schedules.3" for the config file's entries. */
  source?: string;
}

export type ResolvedSchedule = Required<Omit<Schedule, 'source' | 'spread'>> & {
  payload: JobData['payload'];
  /** The window its target's runs are spread over (0: none), and this target's offset in it. */
  spreadMs: number;
  offsetMs: number;
};

export interface ScheduleDescription {
  id: string;
  job: string;
  target: string;
  cron: string;
  tz: string;
  catchUp: string;
  overlap: string;
  payload: JobData['payload'];
  /** The window of a spread schedule ("45m") and this target's offset in it ("12m30s"); null when not spread. */
  spread: { window: string; windowMs: number; offset: string; offsetMs: number } | null;
  /** The next run (the cron's time plus the offset) in the schedule's zone, and in UTC. */
  nextRun: string | null;
  nextRunUtc: string;
  scheduledInRedis: string | null;
  lastRun: { outcome: string; finishedAt: string; error: string | null; errorCode: string | null } | null;
}

export type ScheduleEntry = z.output<typeof scheduleEntrySchema>;

/**
 * Lays the config file's entries over the defaults: an entry whose id is a default's
 * changes the fields it gives (its payload merges key by key); a new id adds a schedule.
 */
export function applyScheduleEntries(
  defaults: readonly Schedule[],
  entries: readonly ScheduleEntry[],
  businessTimeZone: string,
): Schedule[] {
  const out = defaults.map((s) => ({ ...s }));
  entries.forEach((e, i) => {
    const source = `schedules.${i}`;
    if (entries.findIndex((x) => x.id === e.id) !== i)
      throw new ConfigError(`${source}.id: "${e.id}" is listed twice in schedules`);
    if (e.target !== undefined && e.payload?.target !== undefined && e.payload.target !== e.target)
      throw new ConfigError(`${source}.target: differs from ${source}.payload.target; give one`);
    const extra = { ...e.payload, ...(e.target !== undefined ? { target: e.target } : {}) };
    const base = out.find((s) => s.id === e.id);
    if (base) {
      Object.assign(base, {
        ...(e.job !== undefined && { job: e.job }),
        ...(e.cron !== undefined && { cron: e.cron }),
        ...(e.tz !== undefined && { tz: e.tz }),
        ...(e.catchUp !== undefined && { catchUp: e.catchUp }),
        ...(e.overlap !== undefined && { overlap: e.overlap }),
        ...(e.spread !== undefined && { spread: e.spread }),
        payload: { ...base.payload, ...extra },
        source,
      });
      return;
    }
    for (const field of ['job', 'cron'] as const) {
      if (e[field] === undefined)
        throw new ConfigError(
          `${source}.${field}: is required for a new schedule ("${e.id}" is not a default one; ` +
            `defaults: ${defaults.map((s) => s.id).join(', ') || 'none'})`,
        );
    }
    out.push({
      id: e.id,
      job: e.job!,
      cron: e.cron!,
      tz: e.tz ?? businessTimeZone,
      payload: extra,
      catchUp: e.catchUp,
      overlap: e.overlap,
      spread: e.spread,
      source,
    });
  });
  return out;
}

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
    // "schedules.3.cron: …" for the file's entries, 'schedule "x" cron: …' for the others.
    const where = (field: string) => (s.source ? `${s.source}.${field}` : `schedule "${s.id}" ${field}`);
    if (!SCHEDULE_ID.test(s.id)) throw new ConfigError(`${where('id')}: must be lower-case letters, digits, _ . -`);
    if (seen.has(s.id)) throw new ConfigError(`${where('id')}: "${s.id}" is used twice`);
    seen.add(s.id);
    if (!registry.get(s.job)) throw new ConfigError(`${where('job')}: no job "${s.job}"${registry.hintFor(s.job)}`);
    if (!IANAZone.isValidZone(s.tz))
      throw new ConfigError(`${where('tz')}: "${s.tz}" is not an IANA time zone (e.g. Asia/Dhaka, UTC)`);
    // A cron that parses but never fires ("0 3 31 2 *") is refused here too, before the
    // first write to Redis: the set is synced whole or not at all.
    try {
      nextRun(parseCron(s.cron), s.tz, Date.now());
    } catch (err) {
      throw new ConfigError(`${where('cron')}: ${(err as Error).message}`);
    }
    let payload: JobData['payload'];
    try {
      payload = registry.parsePayload(s.job, s.payload ?? {});
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      throw new ConfigError(err.issues.map((i) => `${where(`payload.${i.path}`)}: ${i.message}`).join('; '));
    }
    if (disabled.includes(s.id)) continue;
    const spreadMs = resolveSpread(s, registry, where);
    const { source: _source, spread: _spread, ...schedule } = s;
    out.push({
      ...schedule,
      payload,
      catchUp: s.catchUp ?? 'latest',
      overlap: s.overlap ?? 'skip',
      spreadMs,
      offsetMs: spreadOffsetMs(payload.target, spreadMs),
    });
  }
  return out;
}

/** The schedule's spread, or its job's (jobs.<name>.spread); shorter than the time between two of its runs. */
function resolveSpread(s: Schedule, registry: Registry, where: (field: string) => string): number {
  const own = s.spread !== undefined;
  const text = own ? s.spread : registry.get(s.job)!.run.spread;
  if (text === undefined) return 0;
  const key = own ? where('spread') : `jobs.${s.job}.spread (schedule "${s.id}")`;
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (err) {
    throw new ConfigError(`${key}: ${(err as Error).message}`);
  }
  // A window as long as the time between runs would start one night's last target after the next night's first.
  const gap = ms > 0 ? shortestGapMs(s.cron, s.tz, Date.now()) : Number.POSITIVE_INFINITY;
  if (ms >= gap)
    throw new ConfigError(
      `${key}: ${text} is not shorter than the ${formatDuration(gap)} between two runs of "${s.cron}"; ` +
        'give a shorter spread',
    );
  return ms;
}

export class Scheduler {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly queues: Queues,
    private readonly registry: Registry,
    private readonly schedules: readonly ResolvedSchedule[],
    private readonly logger: Logger,
  ) {}

  /** What the scheduler of `s` holds in Redis: its cron, zone and offset, and the job it adds. */
  private write(s: ResolvedSchedule): SchedulerWrite {
    const data: JobData = { payload: s.payload, trigger: `schedule:${s.id}`, scheduleId: s.id };
    return {
      queue: s.job,
      id: s.id,
      // Only a spread schedule carries its offset: the others stay as BullMQ writes them.
      repeat: { pattern: s.cron, tz: s.tz, ...(s.offsetMs > 0 && { spreadOffsetMs: s.offsetMs }) },
      template: { name: s.job, data, opts: jobOptions(this.queues.config, this.registry.get(s.job)!) },
    };
  }

  private async upsert(s: ResolvedSchedule): Promise<void> {
    const w = this.write(s);
    await this.queues.get(w.queue).upsertJobScheduler(w.id, w.repeat, w.template);
  }

  /**
   * Writes every schedule and removes schedulers that are no longer in the list, once per
   * deployment: under a lock, and only when the set differs from the one last written.
   */
  async sync(): Promise<SyncResult> {
    return syncSchedules(
      this.queues,
      this.schedules.map((s) => this.write(s)),
      this.registry
        .names()
        .map((name) => ({ queue: name, globalConcurrency: this.registry.get(name)!.run.globalConcurrency })),
      this.logger,
    );
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

  /** Each schedule with its next runs in its own time zone, what Redis holds, and its last run. */
  async describe(now = Date.now(), lastRuns = new Map<string, LastRun>()): Promise<ScheduleDescription[]> {
    return Promise.all(
      this.schedules.map(async (s) => {
        const scheduler = await this.queues.get(s.job).getJobScheduler(s.id);
        const next = nextSpreadRun(s.cron, s.tz, now, s.offsetMs);
        const last = lastRuns.get(s.id);
        return {
          id: s.id,
          job: s.job,
          target: s.payload.target,
          cron: s.cron,
          tz: s.tz,
          catchUp: s.catchUp,
          overlap: s.overlap,
          payload: s.payload,
          spread: s.spreadMs
            ? {
                window: formatDuration(s.spreadMs),
                windowMs: s.spreadMs,
                offset: formatDuration(s.offsetMs),
                offsetMs: s.offsetMs,
              }
            : null,
          nextRun: DateTime.fromMillis(next, { zone: s.tz }).toISO(),
          nextRunUtc: new Date(next).toISOString(),
          scheduledInRedis: scheduler?.next !== undefined ? new Date(scheduler.next).toISOString() : null,
          lastRun: last
            ? {
                outcome: last.outcome,
                finishedAt: new Date(last.finishedAt).toISOString(),
                error: last.error,
                errorCode: last.errorCode,
              }
            : null,
        };
      }),
    );
  }
}
