// Every command of the CLI in one table, as ROUTES is for the HTTP server: its name, its
// arguments and options (parsed strictly; `--help` is generated from them), where it runs,
// and what it does. An `api` command asks a Client: the HTTP API when PGMAINT_URL is set,
// else Redis and PostgreSQL directly; a `local` command runs on this machine only.
import { UsageError } from '../core/errors.ts';
import type { OptionSpecs, Parsed } from './args.ts';
import { type Client, stillRuns } from './client.ts';
import { err, out } from './terminal.ts';

interface CommandBase<O extends OptionSpecs> {
  name: string;
  /** Positional arguments, for --help ("<job>"); the command takes none without it. */
  args?: string;
  /** What it does, for --help; lines after the first are its details. */
  summary: string;
  options: O;
}

export interface ApiCommand<O extends OptionSpecs = OptionSpecs> extends CommandBase<O> {
  mode: 'api';
  /** The route it asks in remote mode, and the token that route needs. */
  route: { method: 'GET' | 'POST'; path: string; token: 'viewer' | 'admin' };
  /** Resolves with the exit code. */
  run(parsed: Parsed<O>, client: Client): Promise<number>;
}

export interface LocalCommand<O extends OptionSpecs = OptionSpecs> extends CommandBase<O> {
  mode: 'local';
  run(parsed: Parsed<O>): Promise<void>;
}

export type Command = ApiCommand | LocalCommand;

// Identity functions that type each entry's run() from its own options.
const api = <const O extends OptionSpecs>(c: ApiCommand<O>): Command => c as unknown as Command;
const local = <const O extends OptionSpecs>(c: LocalCommand<O>): Command => c as unknown as Command;

const json = { type: 'boolean', help: 'print what the HTTP API answers, for scripts (a table otherwise)' } as const;

function print(obj: unknown): void {
  out(`${JSON.stringify(obj, null, 2)}\n`);
}

/** The answer as JSON with --json, else as the table `draw` makes of it; exit 0. */
function show<T>(answer: T, asJson: boolean | undefined, draw: (a: T) => string): number {
  if (asJson) print(answer);
  else out(draw(answer));
  return 0;
}

/** The API's body limit (src/http/app.ts): --data is held to it in both modes. */
const DATA_MAX_BYTES = 64 * 1024;
/** A payload is an object of a few levels; far deeper is a mistake, and more than JSON.stringify can carry. */
const DATA_MAX_DEPTH = 32;

/** --data as a payload, refused (exit 2) before any client is asked: the same refusal in both modes. */
function parseData(text: string | undefined): object {
  if (text === undefined || text === '') return {};
  const bytes = Buffer.byteLength(text);
  if (bytes > DATA_MAX_BYTES)
    throw new UsageError(`--data: ${bytes} bytes; a payload may have at most ${DATA_MAX_BYTES} (64 kB)`);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--data: not valid JSON: ${(e as Error).message}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data))
    throw new UsageError(
      `--data: must be a JSON object of the job's fields, e.g. '{"target": "main"}' (got ${
        data === null ? 'null' : Array.isArray(data) ? 'an array' : `a ${typeof data}`
      })`,
    );
  // Breadth first, with no recursion: the depth of what JSON.parse built.
  let level: unknown[] = [data];
  for (let depth = 0; level.length; depth++) {
    if (depth > DATA_MAX_DEPTH)
      throw new UsageError(`--data: nested more than ${DATA_MAX_DEPTH} levels deep; a payload is a flat JSON object`);
    level = level.flatMap((v) => (v !== null && typeof v === 'object' ? Object.values(v) : []));
  }
  return data;
}

const views = () => import('./views.ts');

const holdOptions = {
  queue: { type: 'string', value: 'JOB', help: 'every run of this job (its queue), running or not yet started' },
  all: { type: 'boolean', help: 'every governed job: the maintenance pause (scheduled runs wait, not dropped)' },
} as const;

/** Exactly one of <job>, --queue or --all. */
function holdRequest(command: string, values: { queue?: string; all?: boolean }, positionals: string[]) {
  if (positionals.length > 1)
    throw new UsageError(`${command}: one job at a time (got ${positionals.map((p) => `"${p}"`).join(' ')})`);
  const given = [positionals[0] !== undefined, values.queue !== undefined, values.all === true].filter(Boolean);
  if (given.length !== 1)
    throw new UsageError(
      `${command}: give exactly one of <job> (an id, or QUEUE/ID), --queue JOB or --all ` +
        `(pgmaint status lists the runs)`,
    );
  if (positionals[0] !== undefined) return { job: positionals[0] };
  return values.queue !== undefined ? { queue: values.queue } : { all: true as const };
}

/** The payload with `targets` for --targets/--all-targets (or given in --data), or undefined for one run. */
function fleetData(data: object, targets?: string, all?: boolean, wait?: boolean): object | undefined {
  if (targets === undefined && !all && !('targets' in data)) return undefined;
  if (targets !== undefined && all) throw new UsageError('enqueue: give --targets or --all-targets, not both');
  if (wait) throw new UsageError('--wait: follows one run; with --targets or --all-targets leave it out');
  if (!all && targets === undefined) return data;
  return { ...data, targets: all ? 'all' : targets!.split(',').map((t) => t.trim()) };
}

export const COMMANDS: readonly Command[] = [
  api({
    name: 'enqueue',
    args: '<job>',
    summary:
      'enqueue a run; --wait prints progress, then the result;\n' +
      '--targets a,b or --all-targets: one run per target, in one request',
    mode: 'api',
    route: { method: 'POST', path: '/api/jobs/:name', token: 'admin' },
    options: {
      data: { type: 'string', value: 'JSON', help: "the job's payload, a JSON object (default {}); docs/jobs.md" },
      wait: {
        type: 'boolean',
        help: 'progress lines on stderr, then the result; exit 1 if the run fails, 2 if it refused',
      },
      targets: { type: 'string', value: 'a,b', help: 'one run on each of these targets (all checked first)' },
      'all-targets': { type: 'boolean', help: 'one run on every configured target' },
    },
    async run({ values, positionals }, client) {
      const name = positionals[0];
      if (!name) throw new UsageError('enqueue: a job name is required (pgmaint jobs lists them)');
      if (positionals.length > 1)
        throw new UsageError(
          `enqueue: one job at a time; unexpected ${positionals
            .slice(1)
            .map((p) => `"${p}"`)
            .join(' ')} (payload fields go in --data '{…}')`,
        );
      const data = parseData(values.data);
      const fleet = fleetData(data, values.targets, values['all-targets'], values.wait);
      if (fleet) {
        const answer = await client.enqueueMany(name, fleet);
        err(`enqueued: ${name} on ${answer.enqueued} of ${answer.jobs.length} targets\n`);
        print(answer);
        return 0;
      }
      const progress = (p: unknown) => err(`progress ${JSON.stringify(p)}%\n`);
      const { answer, end } = await client.enqueue(name, data, values.wait ? progress : undefined);
      err(answer.existing ? `merged: ${answer.reason}\n` : `enqueued: ${name} job ${answer.id}\n`);
      if (!end) {
        print(answer);
        return 0;
      }
      // Ctrl-C stops the following, not the run: say so, or it reads as a cancel.
      const interrupted = () => {
        err(`pgmaint: stopped following; ${stillRuns(answer)}\n`);
        process.exit(130);
      };
      process.once('SIGINT', interrupted);
      const outcome = await end().finally(() => process.off('SIGINT', interrupted));
      print(outcome);
      if (outcome.state === 'completed') return 0;
      // A run that refused what it was asked (REFUSED: the field, and why) is a refusal: exit 2.
      return outcome.failedReason?.startsWith('REFUSED: ') ? 2 : 1;
    },
  }),
  api({
    name: 'status',
    summary:
      'queues and workers, open alerts, backups, drill, archive lag,\n' +
      "recovery window and partition runway, from the server's health snapshot",
    mode: 'api',
    route: { method: 'GET', path: '/api/status', token: 'viewer' },
    options: { json },
    async run({ values }, client) {
      const { statusTable } = await import('./status.ts');
      return show(await client.status(), values.json, (r) => statusTable(r, r.timeZone));
    },
  }),
  api({
    name: 'throttle',
    args: '[<job>]',
    summary:
      'hold governed runs for a while: a job (ID or QUEUE/ID), --queue or\n' +
      '--all; running ones wait before their next unit (docs/governor.md)',
    mode: 'api',
    route: { method: 'POST', path: '/api/governor/throttle', token: 'admin' },
    options: {
      ...holdOptions,
      for: { type: 'string', value: 'DURATION', help: 'how long: 30m, 2h, 1h30m, … up to 7d (default 1h)' },
      reason: { type: 'string', value: 'TEXT', help: 'why, shown with the held runs ("during the sale")' },
      json,
    },
    async run({ values, positionals }, client) {
      const scope = holdRequest('throttle', values, positionals);
      const answer = await client.throttle({ ...scope, for: values.for, reason: values.reason });
      return show(answer, values.json, ({ hold }) => `held ${hold.what} until ${hold.until}\n`);
    },
  }),
  api({
    name: 'resume',
    args: '[<job>]',
    summary: 'end a hold that throttle set: a job, --queue or --all',
    mode: 'api',
    route: { method: 'POST', path: '/api/governor/resume', token: 'admin' },
    options: { ...holdOptions, json },
    async run({ values, positionals }, client) {
      const answer = await client.resume(holdRequest('resume', values, positionals));
      return show(answer, values.json, ({ ended }) => `resumed ${ended.what} (held since ${ended.since})\n`);
    },
  }),
  api({
    name: 'schedules',
    summary: 'schedules with their next and last runs',
    mode: 'api',
    route: { method: 'GET', path: '/api/schedules', token: 'viewer' },
    options: { json },
    async run({ values }, client) {
      return show(await client.schedules(), values.json, (await views()).schedulesTable);
    },
  }),
  api({
    name: 'history',
    summary: 'recent runs from the run history',
    mode: 'api',
    route: { method: 'GET', path: '/api/history', token: 'viewer' },
    options: {
      job: { type: 'string', value: 'NAME', help: "this job's runs only" },
      limit: { type: 'string', value: 'N', help: 'how many runs, newest first (1 to 1000, default 20)' },
      json,
    },
    async run({ values }, client) {
      const limit = values.limit ?? '20';
      if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000)
        throw new UsageError(`--limit: must be a whole number from 1 to 1000 (got "${limit}")`);
      return show(
        await client.history({ job: values.job, limit: Number(limit) }),
        values.json,
        (await views()).historyTable,
      );
    },
  }),
  api({
    name: 'backups',
    summary: "a target's dumps and base backups, the recovery window and the last drill",
    mode: 'api',
    route: { method: 'GET', path: '/api/backups', token: 'viewer' },
    options: { target: { type: 'string', value: 'NAME', help: 'the target (default main)' }, json },
    async run({ values }, client) {
      return show(await client.backups(values.target), values.json, (await views()).backupsTable);
    },
  }),
  api({
    name: 'jobs',
    summary: 'the job catalog',
    mode: 'api',
    route: { method: 'GET', path: '/api/jobs', token: 'viewer' },
    options: { json },
    async run({ values }, client) {
      return show(await client.jobs(), values.json, (await views()).jobsTable);
    },
  }),
  local({
    name: 'server',
    summary: 'HTTP API, Bull Board, schedule sync and watchdog',
    mode: 'local',
    options: {},
    async run() {
      await (await import('./roles.ts')).runServerProcess();
    },
  }),
  local({
    name: 'worker',
    summary: 'run jobs (all kinds unless --queues)',
    mode: 'local',
    options: { queues: { type: 'string', value: 'a,b', help: 'only these jobs, comma-separated' } },
    async run({ values }) {
      const only = values.queues
        ?.split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      await (await import('./roles.ts')).runWorkerProcess({ only });
    },
  }),
  local({
    name: 'monitor',
    summary: 'alerts only (the server runs them too)',
    mode: 'local',
    options: {},
    async run() {
      await (await import('./roles.ts')).runMonitorProcess();
    },
  }),
  local({
    name: 'demo',
    summary:
      'local PostgreSQL + Redis + server + worker on the dairy database;\n' +
      '--offsite: pgBackRest and dumps in a local S3 bucket, encrypted',
    mode: 'local',
    options: {
      dir: { type: 'string', value: 'DIR', help: 'where its clusters, backups and env.sh go (default .pgmaint-demo)' },
      scale: { type: 'string', value: 'S', default: 'default', help: 'data size: small, default or large' },
      offsite: { type: 'boolean', help: 'pgBackRest and dumps in a local S3 bucket, encrypted' },
    },
    async run({ values }) {
      await (await import('./local.ts')).demo(values);
    },
  }),
  local({
    name: 'seed',
    summary: 'dairy schema and data into DATABASE_URL (if empty)',
    mode: 'local',
    options: {
      scale: { type: 'string', value: 'small|default|large', default: 'default', help: 'data size' },
    },
    async run({ values }) {
      await (await import('./local.ts')).seed(values.scale ?? 'default');
    },
  }),
];
