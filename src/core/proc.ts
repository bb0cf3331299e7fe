// Child processes (pg_dump, pg_restore, …) that die with the job: an abort signal
// kills them, stderr lines are handed to the caller, and the error names the tool.
import { spawn } from 'node:child_process';
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
  const stderrTail: string[] = [];
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    stderrTail.push(line);
    if (stderrTail.length > 20) stderrTail.shift();
    opts.onStderrLine?.(line);
  });
  if (opts.onStdoutLine) readline.createInterface({ input: child.stdout }).on('line', opts.onStdoutLine);
  else if (opts.captureStdout !== false) child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  else child.stdout.resume();

  try {
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c, s) => resolve([c, s]));
    });
    opts.signal?.throwIfAborted();
    const stderr = stderrTail.join('\n');
    if (code !== 0) {
      const tool = cmd.split('/').pop();
      const last = stderrTail.filter(Boolean).slice(-3).join(' | ');
      throw new ProcessError(
        redact(`${tool} ${sig ? `killed by ${sig}` : `exited with ${code}`}${last ? `: ${last}` : ''}`),
        code,
        redact(stderr),
      );
    }
    return { stdout, stderr };
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}
