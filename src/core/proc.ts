// Child processes (pg_dump, pg_restore, …) that die with the job: an abort signal
// kills them, stderr lines are handed to the caller, and the error names the tool.
// Each gets a minimal environment built from an allow-list (childEnv), never ours whole:
// our tokens, DATABASE_URL, S3 credentials and encryption keys stay in this process.
import { type ChildProcess, spawn } from 'node:child_process';
import readline from 'node:readline';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ProcessError } from './errors.ts';
import { type LibpqSettings, writePassfile } from './libpq.ts';
import { redact } from './redact.ts';

/** What a child is given besides its command line. */
export interface ChildSpec {
  /** Variables on top of the allow-list (never PGPASSWORD). */
  env?: Record<string, string>;
  /** Connects to a database: these PG* variables, and the password through a passfile of its own. */
  libpq?: LibpqSettings;
  /** Run as another OS user (server binaries and pgBackRest when we are root). */
  uid?: number;
  gid?: number;
  /** pgBackRest, or a server whose restore_command runs it: our PGBACKREST_* options go with it. */
  pgbackrestOptions?: boolean;
  /** Started at this niceness (nice -n), it and what it runs: a governed run's children (core/gentle.ts). */
  nice?: number | null;
}

/** The command line that starts `cmd` at `nice` (coreutils nice: set before its exec, so from its start). */
function niced(cmd: string, args: string[], nice: number | null | undefined): [string, string[]] {
  return nice ? ['nice', ['-n', String(nice), cmd, ...args]] : [cmd, args];
}

export interface RunOptions extends ChildSpec {
  signal?: AbortSignal;
  onStderrLine?: (line: string) => void;
  onStdoutLine?: (line: string) => void;
  /** Keep stdout in the result (off for large outputs streamed by line). */
  captureStdout?: boolean;
  cwd?: string;
}

/** The search path, the locale and time zone, the temporary directory. */
const BASE_VARIABLES = /^(PATH|TZ|TMPDIR|LANG|LANGUAGE|LC_[A-Z_]+)$/;

/** libpq's connection variables (PostgreSQL 15), PGPASSWORD left out. */
const LIBPQ_VARIABLES = new Set(
  (
    'PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSFILE PGSERVICE PGSERVICEFILE PGOPTIONS PGAPPNAME PGSSLMODE ' +
    'PGREQUIRESSL PGSSLCOMPRESSION PGSSLCERT PGSSLKEY PGSSLROOTCERT PGSSLCRL PGSSLCRLDIR PGSSLSNI PGREQUIREPEER ' +
    'PGSSLMINPROTOCOLVERSION PGSSLMAXPROTOCOLVERSION PGGSSENCMODE PGKRBSRVNAME PGGSSLIB PGCHANNELBINDING ' +
    'PGCONNECT_TIMEOUT PGCLIENTENCODING PGTARGETSESSIONATTRS PGDATESTYLE PGTZ PGGEQO PGSYSCONFDIR PGLOCALEDIR'
  ).split(' '),
);

/**
 * The environment of every child process, from an allow-list of ours: PATH, locale, time
 * zone, TMPDIR, libpq's connection variables without PGPASSWORD, HOME when the child runs
 * as us, and PGBACKREST_* for pgBackRest only; then `extra` on top.
 */
export function childEnv(
  extra: Record<string, string> = {},
  opts: Pick<ChildSpec, 'uid' | 'pgbackrestOptions'> = {},
): Record<string, string> {
  if ('PGPASSWORD' in extra)
    throw new Error('PGPASSWORD never goes into a child process: give the password in its libpq settings');
  const otherUser = opts.uid !== undefined && opts.uid !== process.getuid?.();
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (
      BASE_VARIABLES.test(name) ||
      LIBPQ_VARIABLES.has(name) ||
      (name === 'HOME' && !otherUser) ||
      (opts.pgbackrestOptions && name.startsWith('PGBACKREST_'))
    )
      env[name] = value;
  }
  return { ...env, ...extra };
}

type Passfile = Awaited<ReturnType<typeof writePassfile>>;

/** A child's environment; its passfile, written here when its libpq settings carry a password, joins `passfiles`. */
async function environmentFor(spec: ChildSpec, passfiles: Passfile[]): Promise<Record<string, string>> {
  const extra = { ...spec.libpq?.env, ...spec.env };
  if (spec.libpq?.password !== undefined) {
    const passfile = await writePassfile(spec.libpq.password, spec);
    passfiles.push(passfile);
    extra.PGPASSFILE = passfile.path;
  }
  return childEnv(extra, spec);
}

/** A PostgreSQL tool in PG_BINDIR (default: Debian's PostgreSQL 15 directory). */
export function binPath(tool: string, env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.PG_BINDIR ?? '/usr/lib/postgresql/15/bin';
  return `${dir}/${tool}`;
}

export async function runProcess(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  opts.signal?.throwIfAborted();
  const passfiles: Passfile[] = [];
  try {
    const env = await environmentFor(opts, passfiles);
    opts.signal?.throwIfAborted();
    const child = spawn(...niced(cmd, args, opts.nice), {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      uid: opts.uid,
      gid: opts.gid,
      cwd: opts.cwd,
    });
    const onAbort = () => child.kill('SIGKILL');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let stdout = '';
    if (opts.onStdoutLine) readline.createInterface({ input: child.stdout }).on('line', opts.onStdoutLine);
    else if (opts.captureStdout !== false) child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    else child.stdout.resume();
    try {
      const stderr = await finished(child, cmd, opts.onStderrLine);
      opts.signal?.throwIfAborted();
      return { stdout, stderr };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  } finally {
    // The child has exited (or never started): its password file goes, whatever happened.
    await Promise.all(passfiles.map((p) => p.remove()));
  }
}

/** One command of a pipeline (run as us). */
export interface Stage extends Pick<ChildSpec, 'env' | 'libpq' | 'nice'> {
  cmd: string;
  args: string[];
}

export interface PipelineOptions {
  signal?: AbortSignal;
  onStdout?: (chunk: Buffer) => void;
  /**
   * A stream the first pipe passes through in this process (the load governor's pacer):
   * while it stops reading, the first stage blocks on its writes, and a pg_dump's server
   * waits in ClientWrite. An error it raises of its own fails the pipeline with that error.
   */
  relay?: Duplex;
}

/**
 * Runs `a | b | …` without a shell: each stage's stdout is the next one's stdin, handed
 * from process to process (Node's pipes are socket pairs; no byte passes through this
 * one, but for the first pipe when a `relay` is given). The last stage writes its own
 * output (a file named in its arguments), or hands it to `onStdout` chunk by chunk. A stage
 * that fails kills the stages before it, an abort kills them all; the error names the first
 * stage that failed of its own accord.
 */
export async function runPipeline(stages: Stage[], opts: PipelineOptions = {}): Promise<void> {
  opts.signal?.throwIfAborted();
  const passfiles: Passfile[] = [];
  try {
    const envs: Record<string, string>[] = [];
    for (const stage of stages) envs.push(await environmentFor(stage, passfiles));
    await runStages(stages, envs, opts);
  } finally {
    await Promise.all(passfiles.map((p) => p.remove()));
  }
}

async function runStages(stages: Stage[], envs: Record<string, string>[], opts: PipelineOptions): Promise<void> {
  opts.signal?.throwIfAborted();
  const children: ChildProcess[] = [];
  const relayed = opts.relay && stages.length > 1;
  for (const [i, stage] of stages.entries()) {
    const prev = children[i - 1];
    const stdin = prev ? (relayed && i === 1 ? 'pipe' : prev.stdout!) : 'ignore';
    children.push(
      spawn(...niced(stage.cmd, stage.args, stage.nice), {
        env: envs[i],
        stdio: [stdin, i < stages.length - 1 || opts.onStdout ? 'pipe' : 'ignore', 'pipe'],
      }),
    );
    // This process keeps no end of the pipe: a reader that dies makes the writer fail.
    if (!(relayed && i === 1)) prev?.stdout?.destroy();
  }
  const last = children.at(-1)!;
  // Every byte is read before the last stage counts as finished ('close' waits for its stdout).
  if (opts.onStdout) last.stdout!.on('data', opts.onStdout);
  const killAll = () => {
    for (const c of children) c.kill('SIGKILL');
  };
  opts.signal?.addEventListener('abort', killAll, { once: true });
  // The relay's own failure (not a broken pipe, which a stage's failure explains) stops them all.
  let relayFailure: unknown;
  const relaying = relayed
    ? pipeline(children[0]!.stdout!, opts.relay!, children[1]!.stdin!).catch((err: unknown) => {
        if (isStreamConsequence(err)) return;
        relayFailure = err;
        killAll();
      })
    : Promise.resolve();
  try {
    const [outcomes] = await Promise.all([
      Promise.allSettled(
        children.map((c, i) =>
          finished(c, stages[i]!.cmd).catch((err) => {
            // The writers feeding it would block or fail on the pipe; the readers after it
            // see the end of their input and finish by themselves.
            for (const writer of children.slice(0, i)) writer.kill('SIGKILL');
            throw err;
          }),
        ),
      ),
      relaying,
    ]);
    opts.signal?.throwIfAborted();
    if (relayFailure) throw relayFailure;
    // The first stage that failed on its own; later ones often fail only because it did.
    const failed = outcomes.find((o) => o.status === 'rejected' && !isConsequence(o.reason));
    const any = failed ?? outcomes.find((o) => o.status === 'rejected');
    if (any) throw (any as PromiseRejectedResult).reason;
  } finally {
    opts.signal?.removeEventListener('abort', killAll);
  }
}

// Killed by us, or failed writing to a pipe its reader had closed (EPIPE, or ECONNRESET
// on a socket pair): a consequence of another stage's failure, not its cause.
const isConsequence = (err: unknown) =>
  err instanceof ProcessError &&
  (err.signal === 'SIGKILL' || err.signal === 'SIGPIPE' || /broken pipe|connection reset/i.test(err.stderr));

/** A stream error that another side's failure explains: a closed pipe or a destroyed stream. */
const isStreamConsequence = (err: unknown) =>
  ['EPIPE', 'ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED'].includes(
    String((err as { code?: unknown })?.code),
  );

/** Waits for a child to exit; resolves with its stderr's tail, or throws a ProcessError naming the tool. */
function finished(child: ChildProcess, cmd: string, onStderrLine?: (line: string) => void): Promise<string> {
  const stderrTail: string[] = [];
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    stderrTail.push(line);
    if (stderrTail.length > 20) stderrTail.shift();
    onStderrLine?.(line);
  });
  return new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, s) => resolve([c, s]));
  }).then(([code, sig]) => {
    const stderr = stderrTail.join('\n');
    if (code === 0) return stderr;
    const tool = cmd.split('/').pop();
    const last = stderrTail.filter(Boolean).slice(-3).join(' | ');
    throw new ProcessError(
      redact(`${tool} ${sig ? `killed by ${sig}` : `exited with ${code}`}${last ? `: ${last}` : ''}`),
      code,
      redact(stderr),
      sig,
    );
  });
}
