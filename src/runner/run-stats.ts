// Run counters and duration histograms shared by every worker process: each
// finished attempt increments a few fields of two Redis hashes, so the server's
// /metrics shows the whole fleet's runs (not one process's) and the counts survive
// restarts of any process. Keys sit under the queue prefix (one Cluster slot).
import type { RedisClient } from './connections.ts';

/** Upper bounds in seconds: a 50 ms cache warm-up to a 12 h base backup. */
export const DURATION_BUCKETS = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 43200];

const SEP = '\u001f'; // a field is job␟target␟outcome; none of them can hold this

const add = (m: Map<string, number>, field: string, n: number) => m.set(field, (m.get(field) ?? 0) + n);

export const runsKey = (prefix: string) => `${prefix}:stats:runs`;
export const durationsKey = (prefix: string) => `${prefix}:stats:durations`;

export interface FinishedRun {
  job: string;
  target: string;
  outcome: string;
  seconds?: number;
  recovered?: boolean;
}

/**
 * Collects a process's finished attempts and writes them in one MULTI every
 * `flushMs`: per-run Redis writes cost a busy worker more than the runs themselves.
 * A killed process loses at most that last moment of counts; the run history stays
 * the durable record.
 */
export class RunStatsRecorder {
  private runs = new Map<string, number>();
  private durations = new Map<string, number>();
  private timer?: NodeJS.Timeout;
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
    private readonly onError: (err: unknown) => void,
    private readonly flushMs = 50,
  ) {}

  record(run: FinishedRun): void {
    const base = `${run.job}${SEP}${run.target}`;
    add(this.runs, `${base}${SEP}${run.outcome}`, 1);
    if (run.recovered) add(this.runs, `${base}${SEP}recovered`, 1);
    if (run.seconds !== undefined) {
      // Buckets are stored non-cumulative (one increment per run); rendering sums them.
      let bucket = '+Inf';
      for (const b of DURATION_BUCKETS)
        if (run.seconds <= b) {
          bucket = String(b);
          break;
        }
      add(this.durations, `${base}${SEP}${bucket}`, 1);
      add(this.durations, `${base}${SEP}sum`, run.seconds);
      add(this.durations, `${base}${SEP}count`, 1);
    }
    this.timer ??= setTimeout(() => void this.flush(), this.flushMs).unref();
  }

  /** Writes what has been collected; resolves once it is in Redis (or failed, reported). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const [runs, durations] = [this.runs, this.durations];
    if (!runs.size && !durations.size) return this.flushing;
    this.runs = new Map();
    this.durations = new Map();
    const multi = this.redis.multi();
    for (const [field, n] of runs) multi.hincrby(runsKey(this.prefix), field, n);
    for (const [field, n] of durations) {
      if (field.endsWith(`${SEP}sum`)) multi.hincrbyfloat(durationsKey(this.prefix), field, n);
      else multi.hincrby(durationsKey(this.prefix), field, n);
    }
    this.flushing = this.flushing.then(() => multi.exec().then(() => undefined, this.onError));
    return this.flushing;
  }
}

export interface RunCount {
  job: string;
  target: string;
  outcome: string;
  count: number;
}

export interface DurationStats {
  job: string;
  target: string;
  /** Cumulative counts per upper bound, as Prometheus wants them. */
  buckets: { le: number; count: number }[];
  sum: number;
  count: number;
}

export async function readRunStats(
  redis: RedisClient,
  prefix: string,
): Promise<{ runs: RunCount[]; durations: DurationStats[] }> {
  const [runsHash, durHash] = await Promise.all([redis.hgetall(runsKey(prefix)), redis.hgetall(durationsKey(prefix))]);
  const runs = Object.entries(runsHash).map(([field, n]) => {
    const [job, target, outcome] = field.split(SEP) as [string, string, string];
    return { job, target, outcome, count: Number(n) };
  });
  const byRun = new Map<string, { job: string; target: string; raw: Map<string, number> }>();
  for (const [field, n] of Object.entries(durHash)) {
    const [job, target, part] = field.split(SEP) as [string, string, string];
    const k = `${job}${SEP}${target}`;
    if (!byRun.has(k)) byRun.set(k, { job, target, raw: new Map() });
    byRun.get(k)!.raw.set(part, Number(n));
  }
  const durations = [...byRun.values()].map(({ job, target, raw }) => {
    // Cumulative counts, as Prometheus buckets are.
    const buckets: { le: number; count: number }[] = [];
    for (const le of DURATION_BUCKETS)
      buckets.push({ le, count: (buckets.at(-1)?.count ?? 0) + (raw.get(String(le)) ?? 0) });
    return { job, target, buckets, sum: raw.get('sum') ?? 0, count: raw.get('count') ?? 0 };
  });
  return { runs, durations };
}
