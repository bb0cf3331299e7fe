// The load governor of one worker process (docs/governor.md): a sampler per target,
// shared by that target's runs; the holds by hand, read from Redis at most once per
// checkEveryMs for all of them; and a RunGovernor for each governed run. Plugged into the
// worker by the composition root (cli/roles.ts); the runner knows only GovernorPort.
import { type GovernorPolicy, mergeGovernor, type GovernorOverride } from '../core/governor-policy.ts';
import type { Logger } from '../core/logger.ts';
import type { Connections, RedisClient } from '../runner/connections.ts';
import type { GovernedRun, GovernorPort, RunGovernorHandle, StartHold } from '../runner/governor-port.ts';
import { Board } from './board.ts';
import { Controls, type Hold, holdFor, holdText } from './controls.ts';
import { RunGovernor } from './run-governor.ts';
import { TargetSampler } from './sampler.ts';

export class Governor implements GovernorPort {
  readonly controls: Controls;
  readonly board: Board;
  private readonly samplers = new Map<string, TargetSampler>();
  private cached?: { at: number; holds: Promise<Hold[]> };

  constructor(
    private readonly connections: Connections,
    redis: RedisClient,
    private readonly logger: Logger,
    private readonly worker: string,
  ) {
    const prefix = connections.config.redis.prefix;
    this.controls = new Controls(redis, prefix);
    this.board = new Board(redis, prefix);
  }

  start(targets: readonly string[]): void {
    for (const t of targets) if (this.connections.target(t).governor.enabled) this.sampler(t).start();
  }

  /** The holds in force, shared by this process's runs for `maxAgeMs`. */
  holds(maxAgeMs: number): Promise<Hold[]> {
    const now = Date.now();
    if (!this.cached || now - this.cached.at > maxAgeMs) {
      const holds = this.controls.list(now);
      holds.catch(() => {
        if (this.cached?.holds === holds) this.cached = undefined;
      });
      this.cached = { at: now, holds };
    }
    return this.cached.holds;
  }

  async heldBeforeStart(run: Pick<GovernedRun, 'queue' | 'jobId' | 'job' | 'target'>): Promise<StartHold | undefined> {
    let holds: Hold[];
    try {
      holds = await this.holds(1000);
    } catch (err) {
      // Redis is the queue too: a worker that took the job can read it again in a moment.
      this.logger.warn({ err }, 'governor: holds not readable; the run starts');
      return undefined;
    }
    const hold = holdFor(holds, run.queue, run.jobId);
    if (!hold) {
      await this.board.released(run.queue, run.jobId).catch(() => undefined);
      return undefined;
    }
    const reason = `paused ${holdText(hold)}`;
    await this.board
      .held({
        ...run,
        state: 'paused',
        kind: 'paused',
        reason,
        since: Date.now(),
        windowSeconds: null,
        unit: '(not started)',
        started: false,
        worker: this.worker,
        updatedAt: Date.now(),
      })
      .catch(() => undefined);
    return { until: hold.until, reason };
  }

  forRun(run: GovernedRun): RunGovernorHandle {
    const policy = this.policyFor(run.target, run.override as GovernorOverride | undefined);
    const sampler = policy.enabled ? this.sampler(run.target) : undefined;
    sampler?.start();
    return new RunGovernor(
      { board: this.board, holds: (ms) => this.holds(ms), worker: this.worker },
      run,
      policy,
      sampler,
    );
  }

  /** The target's policy with the run's own keys over it (checked when the payload was). */
  policyFor(target: string, override: GovernorOverride | undefined): GovernorPolicy {
    return mergeGovernor(this.connections.target(target).governor, override);
  }

  async close(): Promise<void> {
    await Promise.all([...this.samplers.values()].map((s) => s.stop()));
    this.samplers.clear();
  }

  private sampler(target: string): TargetSampler {
    let s = this.samplers.get(target);
    if (!s) {
      s = new TargetSampler(
        target,
        this.connections.pool(target, 'governor'),
        this.connections.target(target).governor,
        this.logger,
      );
      this.samplers.set(target, s);
    }
    return s;
  }
}
