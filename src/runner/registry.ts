// The job registry: job definitions from jobs/, with run settings from the config
// file (jobs.<name>.attempts, …) laid over each job's defaults.
import type { Config } from '../core/config.ts';
import type { AnyJobDefinition, RunDefaults } from './job-definition.ts';
import { ConfigError, PayloadError } from '../core/errors.ts';
import { type GovernorOverride, governorIssues, mergeGovernor } from '../core/governor-policy.ts';
import { didYouMean } from '../core/suggest.ts';

export interface RegisteredJob {
  def: AnyJobDefinition;
  run: RunDefaults;
  /** The payload schema refusing unknown keys, built once: parsed on every enqueue and run. */
  strictPayload: ReturnType<AnyJobDefinition['payload']['strict']>;
}

export class Registry {
  private readonly jobs = new Map<string, RegisteredJob>();

  constructor(
    defs: readonly AnyJobDefinition[],
    private readonly config: Config,
  ) {
    for (const def of defs) {
      if (this.jobs.has(def.name)) throw new Error(`job "${def.name}" is defined twice`);
      const override = config.jobs[def.name] ?? {};
      const run: RunDefaults = {
        attempts: override.attempts ?? def.defaults.attempts,
        backoffMs: override.backoffMs ?? def.defaults.backoffMs,
        timeoutMs: override.timeoutMs ?? def.defaults.timeoutMs,
        concurrency: override.concurrency ?? def.defaults.concurrency,
      };
      this.jobs.set(def.name, { def, run, strictPayload: def.payload.strict() });
    }
    for (const name of Object.keys(config.jobs)) {
      if (!this.jobs.has(name)) throw new ConfigError(`config jobs.${name}: no such job${this.hintFor(name)}`);
    }
  }

  names(): string[] {
    return [...this.jobs.keys()];
  }

  get(name: string): RegisteredJob | undefined {
    return this.jobs.get(name);
  }

  /** `unknown job "bakup"; did you mean "backup"? (known: …)`: how every caller refuses a job name. */
  unknownJob(name: string): string {
    return `unknown job ${JSON.stringify(name)}${this.hintFor(name)}`;
  }

  /** `; did you mean "backup"? (known: …)`, or only the list when no job name is near. */
  hintFor(name: string): string {
    return `${didYouMean(name, this.names())} (known: ${this.names().join(', ')})`;
  }

  /**
   * Parses a payload with the job's schema, strictly: an unknown key is refused (a
   * misspelt `dryrun` must never mean a real run), then checks the fields that name
   * configured things (target, tables, cache keys) against the configuration.
   */
  parsePayload(name: string, raw: unknown): Record<string, unknown> & { target: string } {
    const job = this.jobs.get(name);
    if (!job) throw new Error(`unknown job "${name}"`);
    if (raw !== undefined && raw !== null && (typeof raw !== 'object' || Array.isArray(raw))) {
      throw new PayloadError([
        { path: '(payload)', message: `must be a JSON object, not ${Array.isArray(raw) ? 'an array' : typeof raw}` },
      ]);
    }
    const known = Object.keys(job.def.payload.shape);
    const parsed = job.strictPayload.safeParse(raw ?? {});
    if (!parsed.success) {
      throw new PayloadError(
        parsed.error.issues.flatMap((i) =>
          i.code === 'unrecognized_keys'
            ? i.keys.map((key) => ({
                path: [...i.path.map(String), key].join('.'),
                message: unknownKeyMessage(key, known),
              }))
            : [{ path: i.path.map(String).join('.') || '(payload)', message: i.message }],
        ),
      );
    }
    const payload = parsed.data as Record<string, unknown> & { target: string };
    if (!this.config.targets.has(payload.target)) {
      throw new PayloadError([
        {
          path: 'target',
          message: `unknown target "${payload.target}" (known: ${[...this.config.targets.keys()].join(', ')})`,
        },
      ]);
    }
    const issues = job.def.checkConfig?.(payload as never, this.config) ?? [];
    // The run's governor keys over its target's may not contradict each other (criticalActive under maxActive, …).
    const override = payload.governor as GovernorOverride | undefined;
    if (override)
      issues.push(
        ...governorIssues(mergeGovernor(this.config.targets.get(payload.target)!.governor, override), (key) =>
          key in override ? `governor.${key}` : `governor.${key} (the target's, with this payload's keys)`,
        ),
      );
    if (issues.length) throw new PayloadError(issues);
    return payload;
  }
}

/** "unknown field (known: a, b)", with a hint when a known key is near (letter case, a typo). */
function unknownKeyMessage(key: string, known: string[]): string {
  return `unknown field${didYouMean(key, known)} (known: ${known.join(', ')})`;
}

/** A stable text of a parsed payload (keys sorted), so equal requests compare equal. */
export function canonicalPayload(payload: Record<string, unknown>): string {
  const sort = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sort)
      : v && typeof v === 'object'
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
          )
        : v;
  return JSON.stringify(sort(payload));
}
