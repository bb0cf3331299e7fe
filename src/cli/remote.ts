// The CLI on an engineer's laptop: every API command goes to the pgmaint server at
// PGMAINT_URL with PGMAINT_TOKEN, so the server's tokens, roles and rate limit apply, and
// no Redis or database credentials are needed here. Each request has a time limit; a
// server that does not answer is exit 3 naming PGMAINT_URL, never a hang.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError, exitCodeFor, ServiceUnavailableError, UsageError } from '../core/errors.ts';
import {
  type BackupsAnswer,
  type Client,
  type Enqueued,
  type EnqueueAnswer,
  type FleetEnqueueAnswer,
  type HistoryAnswer,
  type JobEnd,
  type JobsAnswer,
  type SchedulesAnswer,
  type StatusAnswer,
  type HoldRequest,
  type ResumeAnswer,
  type ThrottleAnswer,
  stillRuns,
} from './client.ts';
import { serverAnswer, unreachable } from './remote-answers.ts';

export interface RemoteSettings {
  url: URL;
  token: string;
  /** PEM of the CA that signed the server's certificate (PGMAINT_CA_FILE), instead of the system's. */
  ca?: Buffer;
  timeoutMs: number;
}

/** The remote mode's settings, or undefined for the direct mode (PGMAINT_URL unset); a bad value is exit 2. */
export function remoteSettings(env: NodeJS.ProcessEnv): RemoteSettings | undefined {
  const raw = env.PGMAINT_URL;
  if (!raw) {
    if (env.PGMAINT_TOKEN)
      throw new ConfigError(
        'PGMAINT_TOKEN: is set but PGMAINT_URL is not; set PGMAINT_URL to go through the HTTP API, or unset ' +
          'PGMAINT_TOKEN for the direct mode (Redis and PostgreSQL, no tokens)',
      );
    return undefined;
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError('PGMAINT_URL: not a URL; e.g. https://pgmaint.example.com or http://10.0.0.5:3000');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new ConfigError(`PGMAINT_URL: must start with https:// or http:// (got "${url.protocol}")`);
  if (url.username || url.password)
    throw new ConfigError('PGMAINT_URL: must not carry credentials; the token goes in PGMAINT_TOKEN');
  if (url.search || url.hash) throw new ConfigError('PGMAINT_URL: must have no query or fragment');
  const token = env.PGMAINT_TOKEN;
  if (!token) throw new ConfigError('PGMAINT_TOKEN: is required with PGMAINT_URL (an admin or viewer token)');
  // A header cannot carry them; a token read from a file often ends in a newline.
  if (!/^[\x21-\x7e]+$/.test(token))
    throw new ConfigError('PGMAINT_TOKEN: must be printable ASCII without spaces or line breaks');
  const settings: RemoteSettings = { url, token, timeoutMs: timeoutMs(env.PGMAINT_TIMEOUT) };
  const caFile = env.PGMAINT_CA_FILE;
  if (caFile) {
    if (url.protocol !== 'https:')
      throw new ConfigError(`PGMAINT_CA_FILE: applies to https:// only, and PGMAINT_URL is ${url.protocol}//`);
    let pem: Buffer;
    try {
      pem = fs.readFileSync(caFile);
    } catch (err) {
      throw new ConfigError(`PGMAINT_CA_FILE: cannot read ${caFile}: ${(err as Error).message}`);
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----'))
      throw new ConfigError(`PGMAINT_CA_FILE: ${caFile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
    settings.ca = pem;
  }
  return settings;
}

function timeoutMs(raw: string | undefined): number {
  if (raw === undefined || raw === '') return 30_000;
  if (!/^\d{1,3}$/.test(raw) || Number(raw) < 1 || Number(raw) > 600)
    throw new ConfigError(`PGMAINT_TIMEOUT: must be whole seconds from 1 to 600 (got "${raw}")`);
  return Number(raw) * 1000;
}

/** GET /api/jobs/:queue/:id, the fields a follower reads. */
interface JobAnswer {
  state: string;
  progress: unknown;
  result: unknown;
  failedReason: string | null;
  attemptsMade: number;
}

/**
 * How long `enqueue --wait` goes on asking a server that does not answer (no answer, or 429/502/503/504)
 * before it gives up, by the clock: each request waits at most what is left of it.
 */
export const FOLLOW_PATIENCE_MS = 30_000;

/** Between two requests of a follow that did not get an answer. */
const FOLLOW_RETRY_MS = 2000;

export class RemoteClient implements Client {
  private readonly agent: http.Agent;
  /** "PGMAINT_URL https://…", for messages. */
  private readonly server: string;

  constructor(private readonly s: RemoteSettings) {
    const options = { keepAlive: true, maxSockets: 2 };
    this.agent = s.url.protocol === 'https:' ? new https.Agent({ ...options, ca: s.ca }) : new http.Agent(options);
    this.server = `PGMAINT_URL ${s.url.origin}${s.url.pathname.replace(/\/+$/, '')}`;
  }

  status = () => this.get<StatusAnswer>('status', '/api/status');
  schedules = () => this.get<SchedulesAnswer>('schedules', '/api/schedules');
  history = (f: { job?: string; limit: number }) =>
    this.get<HistoryAnswer>('history', '/api/history', { job: f.job, limit: String(f.limit) });
  jobs = () => this.get<JobsAnswer>('jobs', '/api/jobs');
  backups = (target: string | undefined) => this.get<BackupsAnswer>('backups', '/api/backups', { target });

  async enqueue(name: string, data: unknown, follow?: (progress: unknown) => void): Promise<Enqueued> {
    const path = `/api/jobs/${encodeURIComponent(name)}`;
    const answer = (await this.request('enqueue', 'POST', path, {}, { body: data })) as EnqueueAnswer;
    return { answer, end: follow && (() => this.follow(answer, follow)) };
  }

  throttle = async (req: HoldRequest & { for?: string; reason?: string }) =>
    (await this.request('throttle', 'POST', '/api/governor/throttle', {}, { body: req })) as ThrottleAnswer;
  resume = async (req: HoldRequest) =>
    (await this.request('resume', 'POST', '/api/governor/resume', {}, { body: req })) as ResumeAnswer;
  async enqueueMany(name: string, data: object): Promise<FleetEnqueueAnswer> {
    const path = `/api/jobs/${encodeURIComponent(name)}`;
    return (await this.request('enqueue', 'POST', path, {}, { body: data })) as FleetEnqueueAnswer;
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }

  /**
   * Polls the job until it ends, passing on each new progress value of a running or
   * finished run. A server that stops answering is asked again until FOLLOW_PATIENCE_MS
   * have passed since the first request it left unanswered; then exit 3: the run goes on
   * without us.
   */
  private async follow(answer: EnqueueAnswer, follow: (progress: unknown) => void): Promise<JobEnd> {
    const path = `/api/jobs/${encodeURIComponent(answer.queue)}/${encodeURIComponent(answer.id)}`;
    const started = Date.now();
    let shown: unknown;
    let failingSince: number | undefined;
    for (;;) {
      let job: JobAnswer;
      const asked = Date.now();
      const left = failingSince === undefined ? FOLLOW_PATIENCE_MS : failingSince + FOLLOW_PATIENCE_MS - asked;
      try {
        job = (await this.request(
          'enqueue --wait',
          'GET',
          path,
          {},
          { timeoutMs: Math.max(1, Math.min(this.s.timeoutMs, left)) },
        )) as JobAnswer;
        failingSince = undefined;
      } catch (err) {
        const unanswered = exitCodeFor(err) === 3;
        if (unanswered) {
          failingSince ??= asked;
          const wait = failingSince + FOLLOW_PATIENCE_MS - Date.now();
          // Asked again only with a second or more left for the answer (a timer of 0 or less is no request).
          if (wait > 1000) {
            await sleep(Math.min(FOLLOW_RETRY_MS, wait - 1000));
            continue;
          }
        }
        const gone = exitCodeFor(err) === 2;
        const why = unanswered
          ? `; gave up following the run after ${FOLLOW_PATIENCE_MS / 1000} s without an answer: `
          : gone
            ? '; the server no longer keeps the run: '
            : '; while following the run: ';
        throw new (unanswered ? ServiceUnavailableError : Error)(`${(err as Error).message}${why}${stillRuns(answer)}`);
      }
      if ((job.state === 'active' || job.state === 'completed') && job.progress !== shown) {
        shown = job.progress;
        follow(job.progress);
      }
      if (job.state === 'completed') return { id: answer.id, state: 'completed', result: job.result };
      if (job.state === 'failed')
        return { id: answer.id, state: 'failed', failedReason: job.failedReason, attemptsMade: job.attemptsMade };
      await sleep(Date.now() - started < 10_000 ? 250 : 1000);
    }
  }

  /** A refused query parameter is named as the flag that set it (`--job`), as the direct mode does. */
  private async get<T>(action: string, path: string, query: Record<string, string | undefined> = {}): Promise<T> {
    try {
      return (await this.request(action, 'GET', path, query)) as T;
    } catch (err) {
      const field = Object.keys(query).find((k) => (err as Error).message.startsWith(`${k}: `));
      if (field && exitCodeFor(err) === 2) throw new UsageError(`--${(err as Error).message}`);
      throw err;
    }
  }

  private request(
    action: string,
    method: 'GET' | 'POST',
    path: string,
    query: Record<string, string | undefined>,
    opts: { body?: unknown; timeoutMs?: number } = {},
  ): Promise<unknown> {
    const target = new URL(this.s.url.href);
    target.pathname = `${target.pathname.replace(/\/+$/, '')}${path}`;
    for (const [k, v] of Object.entries(query)) if (v !== undefined) target.searchParams.set(k, v);
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const timeoutMs = opts.timeoutMs ?? this.s.timeoutMs;
    const signal = AbortSignal.timeout(timeoutMs);
    const send = target.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => reject(unreachable(this.server, err, signal.aborted && timeoutMs, this.s.timeoutMs));
      const req = send(
        target,
        {
          method,
          agent: this.agent,
          signal,
          headers: {
            authorization: `Bearer ${this.s.token}`,
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', fail);
          res.on('end', () => {
            try {
              resolve(serverAnswer(this.server, action, target, res, Buffer.concat(chunks)));
            } catch (err) {
              reject(err);
            }
          });
        },
      );
      req.on('error', fail);
      req.end(payload);
    });
  }
}
