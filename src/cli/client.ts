// What the CLI's API commands ask, and the answers they get: the HTTP API's bodies. Two
// clients answer: remote.ts over HTTP (PGMAINT_URL, with the server's tokens, roles and
// rate limit) and direct.ts in this process (Redis and PostgreSQL themselves, bypassing
// them), which runs the API's own handlers so that both print the same things.
import {
  ConfigError,
  ForbiddenError,
  ServiceUnavailableError,
  UnauthenticatedError,
  UsageError,
} from '../core/errors.ts';
import type { HoldView } from '../http/governor-handlers.ts';
import type { StatusReport } from '../monitoring/status.ts';
import type { HistoryRow } from '../runner/history.ts';
import type { RunDefaults } from '../runner/job-definition.ts';
import type { ScheduleDescription } from '../runner/scheduler.ts';

/** A value as it comes out of JSON: dates are ISO strings. */
export type Json<T> = T extends Date ? string : T extends object ? { [K in keyof T]: Json<T[K]> } : T;

export type StatusAnswer = StatusReport & { timeZone: string };
export type SchedulesAnswer = { schedules: Json<ScheduleDescription>[] };
export type HistoryAnswer = { runs: Json<HistoryRow>[]; timeZone: string };
export type JobsAnswer = { jobs: { name: string; description: string; defaults: RunDefaults }[] };

/** GET /api/backups, the fields the table shows (--json prints all of it). */
export interface BackupsAnswer {
  target: string;
  timeZone: string;
  engine: string;
  newestDumpAgeSeconds: number | null;
  newestBaseBackupAgeSeconds: number | null;
  dumps: {
    file: string;
    format: string;
    finishedAt: string;
    bytes: number;
    verified: unknown;
    rowCountsRecorded: boolean;
    restoreCheck: { ok: boolean; checkedAt: string } | null;
    location: string;
    where: string[];
  }[];
  partitionArchives: {
    file: string;
    parent: string;
    partitions: { partition: string; rows: number }[];
    rows: number;
    bytes: number;
    location: string;
    where: string[];
  }[];
  baseBackups: {
    label: string;
    format: string;
    compression: string;
    stoppedAt: string;
    bytes: number;
    where: string[];
  }[];
  pgbackrest: {
    stanza: string;
    location: string;
    sets: { label: string; type: string; stoppedAt: string; bytes: number }[];
  } | null;
  recoveryWindow: { earliest: string | null; latest: string | null; seconds: number; brokenChains: unknown[] };
  lastDrill: { outcome: string; finishedAt: string } | null;
  lastRestoreCheck: { outcome: string; finishedAt: string } | null;
}

/** POST /api/jobs/:name. */
export interface EnqueueAnswer {
  id: string;
  queue: string;
  name: string;
  existing: boolean;
  reason?: string;
}

/** Which governed runs a hold by hand is on: exactly one of these (checked by the server). */
export interface HoldRequest {
  job?: string;
  queue?: string;
  all?: true;
}

/** POST /api/governor/throttle and /api/governor/resume. */
export type ThrottleAnswer = { hold: HoldView };
export type ResumeAnswer = { ended: HoldView };

/** POST /api/jobs/:name with `targets`: each target's job, or why it was merged or not enqueued. */
export interface FleetEnqueueAnswer {
  queue: string;
  name: string;
  jobs: { target: string; id?: string; existing?: boolean; reason?: string; error?: string }[];
  enqueued: number;
  refused: number;
}

/** How a followed run ended: what `enqueue --wait` prints. */
export type JobEnd =
  | { id: string; state: 'completed'; result: unknown }
  | { id: string; state: 'failed'; failedReason: string | null; attemptsMade: number | undefined };

export interface Enqueued {
  answer: EnqueueAnswer;
  /** Waits for the run to end; only when the enqueue was asked to follow it. */
  end?: () => Promise<JobEnd>;
}

export interface Client {
  status(): Promise<StatusAnswer>;
  schedules(): Promise<SchedulesAnswer>;
  history(filter: { job?: string; limit: number }): Promise<HistoryAnswer>;
  jobs(): Promise<JobsAnswer>;
  backups(target: string | undefined): Promise<BackupsAnswer>;
  /** With `follow`, progress values of the run are passed to it until end() returns. */
  enqueue(name: string, data: unknown, follow?: (progress: unknown) => void): Promise<Enqueued>;
  /** Holds governed runs for a while (`for`: "30m"; default 1h). */
  throttle(req: HoldRequest & { for?: string; reason?: string }): Promise<ThrottleAnswer>;
  resume(req: HoldRequest): Promise<ResumeAnswer>;
  /** One run per target of `data.targets` (a list, or "all"), in one request. */
  enqueueMany(name: string, data: object): Promise<FleetEnqueueAnswer>;
  close(): Promise<void>;
}

/** What `enqueue --wait` says when it stops following a run it enqueued: the run is not undone. */
export function stillRuns(answer: Pick<EnqueueAnswer, 'id' | 'queue'>): string {
  return (
    `${answer.queue} job ${answer.id} was enqueued and may still run; pgmaint history --job ${answer.queue} ` +
    'shows how it ends'
  );
}

/**
 * The error for an API answer that is not a success, by its status: the CLI's exit code
 * follows (docs/api.md). `server` names where the answer came from, for messages.
 */
export function answerError(status: number, body: unknown, server: string, action: string): Error {
  const b = (body ?? {}) as { error?: unknown; jobs?: unknown; targets?: unknown };
  const said = typeof b.error === 'string' ? b.error : `HTTP ${status}`;
  const known = Array.isArray(b.jobs) ? b.jobs : Array.isArray(b.targets) ? b.targets : undefined;
  if (status === 401)
    return new UnauthenticatedError(
      `PGMAINT_TOKEN: not accepted by ${server} (401 ${said}); use an admin or viewer token of that server`,
    );
  if (status === 403)
    return new ForbiddenError(
      `${action}: refused by ${server} (403 ${said})` +
        (['enqueue', 'throttle', 'resume'].includes(action) ? `; ${action} needs the admin token` : ''),
    );
  if (status === 404 && said === 'not found')
    return new ConfigError(`${server} has no route for ${action} (404): is it a pgmaint server of this version?`);
  if (status === 429 || status === 502 || status === 503 || status === 504)
    return new ServiceUnavailableError(`${server}: ${said} (${status})`);
  // The server's words may name the known ones already (an unknown job's "did you mean").
  const listed = known && !said.includes('(known: ') ? ` (known: ${known.join(', ')})` : '';
  if (status === 404) return new UsageError(`${action}: ${said}${listed}`);
  if (status >= 400 && status < 500) return new UsageError(said);
  return new Error(`${server} answered ${status}: ${said}`);
}
