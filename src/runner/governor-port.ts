// What the worker asks of the load governor (src/governor, docs/governor.md), which the
// composition root plugs in: the runner knows this interface, never the governor itself.
// A job is governed when its payload schema has the `governor` field.
import { PassThrough } from 'node:stream';
import type { Deferral } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { AnyJobDefinition, RunGovernor } from './job-definition.ts';

/** One run, as the governor needs to know it. */
export interface GovernedRun {
  queue: string;
  jobId: string;
  job: string;
  target: string;
  /** The payload's `governor` field (already parsed by the job's schema). */
  override: unknown;
  /** Aborts the run (a critical threshold): its sessions and children are ended. */
  abort(reason: Error): void;
  signal: AbortSignal;
  /** When the run's maximum run time ends (epoch ms): held up to it, the run stops as deferred first. */
  timeoutAt: number;
  /** A line in Bull Board's log at the run's current progress ("[40%] throttled: …"). */
  report(line: string): Promise<void>;
  logger: Logger;
  /** What the run gives back while it waits between units, and takes again before the next. */
  holdings?: RunHoldings;
}

/** What a held run holds that another may use meanwhile (docs/governor.md, what a held run holds). */
export interface RunHoldings {
  /** Gives back its heavy-job permit (if any) and the target sessions it left idle. */
  release(): Promise<void>;
  /** Takes its permit again: undefined once it holds it (or needs none), else why it waits for it. */
  retake(): Promise<string | undefined>;
}

export interface RunGovernorHandle extends RunGovernor {
  /** Set when the run was stopped as deferred by load: its result says so. */
  readonly deferral?: Deferral;
  /** The run ended; `succeeded` clears an earlier deferral of this job on this target. */
  close(succeeded: boolean): Promise<void>;
}

/** A hold that keeps a run from starting: it goes back to delayed until then. */
export interface StartHold {
  until: number;
  reason: string;
}

export interface GovernorPort {
  /** Starts sampling the targets (the quiet baseline, standbys' replay) before any run needs them. */
  start(targets: readonly string[]): void;
  heldBeforeStart(run: Pick<GovernedRun, 'queue' | 'jobId' | 'job' | 'target'>): Promise<StartHold | undefined>;
  forRun(run: GovernedRun): RunGovernorHandle;
  close(): Promise<void>;
}

/** Whether runs of this job ask the governor: its payload takes a `governor` field. */
export const isGoverned = (def: AnyJobDefinition): boolean => 'governor' in def.payload.shape;

/** The governor of a run that is not governed: every gate open, streams passed through. */
export const OPEN_GOVERNOR: RunGovernor = {
  gate: async () => undefined,
  pacer: () => new PassThrough(),
  baseBackupMaxRate: null,
  gentle: null,
};
