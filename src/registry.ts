// The job registry: job definitions from jobs/, with run settings from the config
// file (jobs.<name>.attempts, …) laid over each job's defaults.
import type { Config } from './config.ts';
import type { AnyJobDefinition, RunDefaults } from './job-definition.ts';

export interface RegisteredJob {
  def: AnyJobDefinition;
  run: RunDefaults;
}

export class PayloadError extends Error {
  override name = 'PayloadError';
  constructor(readonly issues: { path: string; message: string }[]) {
    super(`invalid payload: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  }
}

export class Registry {
  private readonly jobs = new Map<string, RegisteredJob>();

  constructor(defs: readonly AnyJobDefinition[], private readonly config: Config) {
    for (const def of defs) {
      if (this.jobs.has(def.name)) throw new Error(`job "${def.name}" is defined twice`);
      const override = config.jobs[def.name] ?? {};
      const run: RunDefaults = {
        attempts: override.attempts ?? def.defaults.attempts,
        backoffMs: override.backoffMs ?? def.defaults.backoffMs,
        timeoutMs: override.timeoutMs ?? def.defaults.timeoutMs,
        concurrency: override.concurrency ?? def.defaults.concurrency,
      };
      this.jobs.set(def.name, { def, run });
    }
    for (const name of Object.keys(config.jobs)) {
      if (!this.jobs.has(name)) throw new Error(`config jobs.${name}: no such job (known: ${this.names().join(', ')})`);
    }
  }

  names(): string[] {
    return [...this.jobs.keys()];
  }

  get(name: string): RegisteredJob | undefined {
    return this.jobs.get(name);
  }

  /** Parses a payload with the job's schema and checks its target exists. */
  parsePayload(name: string, raw: unknown): Record<string, unknown> & { target: string } {
    const job = this.jobs.get(name);
    if (!job) throw new Error(`unknown job "${name}"`);
    const parsed = job.def.payload.safeParse(raw ?? {});
    if (!parsed.success) {
      throw new PayloadError(parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(payload)', message: i.message })));
    }
    if (!this.config.targets.has(parsed.data.target)) {
      throw new PayloadError([{ path: 'target', message: `unknown target "${parsed.data.target}" (known: ${[...this.config.targets.keys()].join(', ')})` }]);
    }
    return parsed.data as Record<string, unknown> & { target: string };
  }
}

