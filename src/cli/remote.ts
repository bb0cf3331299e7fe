// The CLI on an engineer's laptop: every API command goes to the pgmaint server at
// PGMAINT_URL with PGMAINT_TOKEN, so the server's tokens, roles and rate limit apply, and
// no Redis or database credentials are needed here. Each request has a time limit; a
// server that does not answer is exit 3 naming PGMAINT_URL, never a hang.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError, exitCodeFor, ServiceUnavailableError } from '../core/errors.ts';
import {
  answerError,
  type BackupsAnswer,
  type Client,
  type Enqueued,
  type EnqueueAnswer,
  type HistoryAnswer,
  type JobEnd,
  type JobsAnswer,
  type SchedulesAnswer,
  type StatusAnswer,
} from './client.ts';

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

// TLS verification failures: a missing CA is a setting to fix, not a server to wait for.
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS/;

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
    const answer = (await this.request(
      'enqueue',
      'POST',
      `/api/jobs/${encodeURIComponent(name)}`,
      {},
      data,
    )) as EnqueueAnswer;
    return { answer, end: follow && (() => this.follow(answer, follow)) };
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }

  /**
   * Polls the job until it ends, passing on each new progress value of a running or
   * finished run. A server that stops answering is retried for about half a minute: the
   * run goes on without us.
   */
  private async follow(answer: EnqueueAnswer, follow: (progress: unknown) => void): Promise<JobEnd> {
    const path = `/api/jobs/${encodeURIComponent(answer.queue)}/${encodeURIComponent(answer.id)}`;
    const started = Date.now();
    let shown: unknown;
    let misses = 0;
    for (;;) {
      let job: JobAnswer;
      try {
        job = await this.get<JobAnswer>('enqueue --wait', path);
        misses = 0;
      } catch (err) {
        if (exitCodeFor(err) === 3 && ++misses < 15) {
          await sleep(2000);
          continue;
        }
        const gone = exitCodeFor(err) === 2;
        throw new (gone ? Error : ServiceUnavailableError)(
          `${(err as Error).message}; while following ${answer.queue} job ${answer.id}, which ` +
            `${gone ? 'the server no longer keeps' : 'goes on running'}: pgmaint history --job ${answer.queue} shows ` +
            'how it ends',
        );
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

  private async get<T>(action: string, path: string, query: Record<string, string | undefined> = {}): Promise<T> {
    return (await this.request(action, 'GET', path, query)) as T;
  }

  private request(
    action: string,
    method: 'GET' | 'POST',
    path: string,
    query: Record<string, string | undefined>,
    body?: unknown,
  ): Promise<unknown> {
    const target = new URL(this.s.url.href);
    target.pathname = `${target.pathname.replace(/\/+$/, '')}${path}`;
    for (const [k, v] of Object.entries(query)) if (v !== undefined) target.searchParams.set(k, v);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const signal = AbortSignal.timeout(this.s.timeoutMs);
    const send = target.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => reject(this.unreachable(err, signal.aborted));
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
              resolve(this.answer(action, res.statusCode ?? 0, res.headers['content-type'], Buffer.concat(chunks)));
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

  private answer(action: string, status: number, contentType: string | undefined, raw: Buffer): unknown {
    let body: unknown;
    if (/^application\/json\b/.test(contentType ?? '')) {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch {
        body = undefined;
      }
    }
    if (status >= 200 && status < 300) {
      if (body === undefined)
        throw new ConfigError(
          `${this.server} answered ${status} with ${contentType ?? 'no content type'}, not pgmaint's JSON: is ` +
            'it the pgmaint server?',
        );
      return body;
    }
    throw answerError(status, body, this.server, action);
  }

  private unreachable(err: Error, timedOut: boolean): Error {
    if (timedOut)
      return new ServiceUnavailableError(
        `${this.server}: no answer within ${this.s.timeoutMs / 1000}s (PGMAINT_TIMEOUT)`,
      );
    const code = String((err as NodeJS.ErrnoException).code ?? '');
    // Node 24 appends its own hint (`; if the root CA is installed locally, try … --use-system-ca`);
    // ours names the setting that does it here.
    if (TLS_CODES.test(code))
      return new ConfigError(
        `${this.server}: its TLS certificate is not trusted here (${err.message.split(';')[0]}); PGMAINT_CA_FILE ` +
          'names the CA ' +
          'that signed it',
      );
    return new ServiceUnavailableError(`${this.server}: cannot reach it: ${err.message}`);
  }
}
