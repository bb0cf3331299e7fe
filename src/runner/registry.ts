// The job registry: job definitions from jobs/, with run settings from the config
// file (jobs.<name>.attempts, …) laid over each job's defaults.
import type { Config } from '../core/config.ts';
import type { AnyJobDefinition, RunDefaults } from './job-definition.ts';
import { ConfigError, type FieldIssue, PayloadError } from '../core/errors.ts';
import { type GovernorOverride, governorIssues, mergeGovernor } from '../core/governor-policy.ts';
import { didYouMean } from '../core/suggest.ts';

/** How runs of a job kind go: its defaults with the config file's `jobs.<name>` laid over them. */
export interface RunSettings extends RunDefaults {
  heavy: boolean;
  /** Runs at once across the deployment (BullMQ's global concurrency); undefined: no limit. */
  globalConcurrency?: number;
  /** The spread of this job's schedules that give none of their own ("45m"), if any. */
  spread?: string;
}

export interface RegisteredJob {
  def: AnyJobDefinition;
  run: RunSettings;
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
      const run: RunSettings = {
        attempts: override.attempts ?? def.defaults.attempts,
        backoffMs: override.backoffMs ?? def.defaults.backoffMs,
        timeoutMs: override.timeoutMs ?? def.defaults.timeoutMs,
        concurrency: override.concurrency ?? def.defaults.concurrency,
        heavy: override.heavy ?? def.defaults.heavy ?? false,
        globalConcurrency: override.globalConcurrency,
        spread: override.spread,
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
        { path: 'target', message: `unknown target "${payload.target}" (known: ${this.knownTargets()})` },
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

  /** The configured targets for a message: the first 20 names, then how many more. */
  private knownTargets(): string {
    const names = [...this.config.targets.keys()];
    return names.length <= 20 ? names.join(', ') : `${names.slice(0, 20).join(', ')}, … ${names.length - 20} more`;
  }

  /**
   * A request for one target (the payload itself), or for many: `targets: ["a", "b"]` or
   * `targets: "all"` beside the fields every target's run shares. Each target's payload is
   * parsed and checked before anything is enqueued; any refusal refuses the whole request,
   * naming `targets.<i>` (an unknown or repeated name) or the field and the target.
   */
  parseRequest(name: string, raw: unknown): { payloads: ParsedPayload[]; fleet: boolean } {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw) || !('targets' in raw))
      return { payloads: [this.parsePayload(name, raw)], fleet: false };
    const { targets, ...shared } = raw as Record<string, unknown>;
    if ('target' in shared)
      throw new PayloadError([{ path: 'target', message: 'give target (one) or targets (many), not both' }]);
    const names = this.targetList(targets);
    const issues = new Map<string, { issue: FieldIssue; where: string[] }>();
    const payloads: ParsedPayload[] = [];
    names.forEach((target, i) => {
      try {
        payloads.push(this.parsePayload(name, { ...shared, target }));
      } catch (err) {
        if (!(err instanceof PayloadError)) throw err;
        for (const issue of err.issues) {
          const key = `${issue.path}\u0000${issue.message}`;
          const seen = issues.get(key) ?? { issue, where: [] };
          seen.where.push(`targets.${i} "${target}"`);
          issues.set(key, seen);
        }
      }
    });
    if (issues.size) {
      // A field wrong for every target is named once; one wrong for some names them.
      throw new PayloadError(
        [...issues.values()].map(({ issue, where }) =>
          where.length === names.length
            ? issue
            : { path: issue.path, message: `${issue.message} (for ${where.slice(0, 5).join(', ')})` },
        ),
      );
    }
    return { payloads, fleet: true };
  }

  /** `targets`: "all", or a list of configured names, each once. */
  private targetList(targets: unknown): string[] {
    const known = this.config.targets;
    if (targets === 'all') {
      // Never "done" for nothing: a request for every target of a fleet that has none is refused.
      if (known.size === 0) throw new PayloadError([{ path: 'targets', message: '"all": no target is configured' }]);
      return [...known.keys()];
    }
    if (!Array.isArray(targets) || targets.length === 0)
      throw new PayloadError([
        { path: 'targets', message: 'must be "all" or a non-empty list of target names, e.g. ["main", "reporting"]' },
      ]);
    const issues: FieldIssue[] = [];
    targets.forEach((t, i) => {
      const path = `targets.${i}`;
      if (typeof t !== 'string') issues.push({ path, message: 'must be a target name (a string)' });
      else if (!known.has(t)) issues.push({ path, message: `unknown target "${t}" (known: ${this.knownTargets()})` });
      else if (targets.indexOf(t) !== i)
        issues.push({ path, message: `"${t}" is listed twice (first as targets.${targets.indexOf(t)})` });
    });
    if (issues.length) throw new PayloadError(issues);
    return targets as string[];
  }
}

/** A payload parsed and checked against the configuration. */
export type ParsedPayload = Record<string, unknown> & { target: string };

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
