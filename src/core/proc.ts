// Child processes (pg_dump, pg_restore, …) that die with the job: an abort signal
// kills them, stderr lines are handed to the caller, and the error names the tool.
import { type ChildProcess, spawn } from 'node:child_process';
import readline from 'node:readline';
import { ProcessError } from './errors.ts';
import { redact } from './redact.ts';

export interface RunOptions {
  env?: Record<string, string>;
  signal?: AbortSignal;
  onStderrLine?: (line: string) => void;
  onStdoutLine?: (line: string) => void;
  /** Keep stdout in the result (off for large outputs streamed by line). */
  captureStdout?: boolean;
  /** Run as another OS user (server binaries when we are root). */
  uid?: number;
  gid?: number;
  cwd?: string;
}

export function binPath(tool: string): string {
  const dir = process.env.PG_BINDIR ?? '/usr/lib/postgresql/15/bin';
  return `${dir}/${tool}`;
}

export async function runProcess(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  opts.signal?.throwIfAborted();
  const child = spawn(cmd, args, {
    env: { ...process.env, ...opts.env },
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
}

/** One command of a pipeline. */
export interface Stage {
  cmd: string;
  args: string[];
  env?: Record<string, string>;
}

/**
 * Runs `a | b | …` without a shell: each stage's stdout is the next one's stdin, handed
 * from process to process (Node's pipes are socket pairs; no byte passes through this
 * one). The last stage writes its own output (a file named in its arguments), or hands
 * it to `onStdout` chunk by chunk. A stage that fails kills the stages before it, an
 * abort kills them all; the error names the first stage that failed of its own accord.
 */
export async function runPipeline(
  stages: Stage[],
  opts: { signal?: AbortSignal; onStdout?: (chunk: Buffer) => void } = {},
): Promise<void> {
  opts.signal?.throwIfAborted();
  const children: ChildProcess[] = [];
  for (const [i, stage] of stages.entries()) {
    const prev = children[i - 1];
    children.push(
      spawn(stage.cmd, stage.args, {
        env: { ...process.env, ...stage.env },
        stdio: [prev ? prev.stdout! : 'ignore', i < stages.length - 1 || opts.onStdout ? 'pipe' : 'ignore', 'pipe'],
      }),
    );
    // This process keeps no end of the pipe: a reader that dies makes the writer fail.
    prev?.stdout?.destroy();
  }
  const last = children.at(-1)!;
  // Every byte is read before the last stage counts as finished ('close' waits for its stdout).
  if (opts.onStdout) last.stdout!.on('data', opts.onStdout);
  const killAll = () => {
    for (const c of children) c.kill('SIGKILL');
  };
  opts.signal?.addEventListener('abort', killAll, { once: true });
  try {
    const outcomes = await Promise.allSettled(
      children.map((c, i) =>
        finished(c, stages[i]!.cmd).catch((err) => {
          // The writers feeding it would block or fail on the pipe; the readers after it
          // see the end of their input and finish by themselves.
          for (const writer of children.slice(0, i)) writer.kill('SIGKILL');
          throw err;
        }),
      ),
    );
    opts.signal?.throwIfAborted();
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
