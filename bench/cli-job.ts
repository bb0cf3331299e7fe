// Benchmarks that run pgmaint as a user does: a worker process (`pgmaint worker --queues …`)
// and, per run, the CLI as a child (`pgmaint enqueue <job> --wait --data '{…}'`), timed from
// outside: from just before the child is spawned to its exit.
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';

const BIN = path.resolve(import.meta.dirname, '../bin/pgmaint.js');

export interface WorkerProcess {
  stop(): Promise<void>;
  /** For an exit handler: SIGKILL, without waiting. */
  kill(): void;
}

/** Starts `pgmaint worker --queues …` with `env`; resolves once it says it started. */
export function startWorker(env: NodeJS.ProcessEnv, queues: string[]): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [BIN, 'worker', '--queues', queues.join(',')], {
    env: { ...env, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let tail = '';
  let started = false;
  const stopped = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      tail = (tail + d.toString()).slice(-4000);
      if (!started && /worker started/.test(tail)) {
        started = true;
        resolve({
          stop: async () => {
            child.kill('SIGTERM');
            await stopped;
          },
          kill: () => child.kill('SIGKILL'),
        });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      if (!started) reject(new Error(`pgmaint worker exited ${code} before it started: ${tail}`));
      else if (code) console.error(`pgmaint worker exited ${code}: ${tail.slice(-1000)}`);
    });
  });
}

export interface CliRun {
  /** From just before the spawn to the child's exit. */
  ms: number;
  /** The run's result, as the CLI printed it. */
  result: Record<string, any>;
}

/** `pgmaint enqueue <name> --wait --data <payload>` as a child process; fails unless the run completed. */
export function cliJob(env: NodeJS.ProcessEnv, name: string, payload: object): Promise<CliRun> {
  const t0 = performance.now();
  const child: ChildProcess = spawn(
    process.execPath,
    [BIN, 'enqueue', name, '--wait', '--data', JSON.stringify(payload)],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    if (process.env.BENCH_TRACE && !out)
      console.error(`    [${((performance.now() - t0) / 1000).toFixed(2)} s] (the result is printed)`);
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
    // BENCH_TRACE=1: each progress line with when it came, to see where a run's time goes.
    if (process.env.BENCH_TRACE)
      for (const line of d.toString().trim().split('\n'))
        console.error(`    [${((performance.now() - t0) / 1000).toFixed(2)} s] ${line.slice(0, 160)}`);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = performance.now() - t0;
      if (process.env.BENCH_TRACE) console.error(`    [${(ms / 1000).toFixed(2)} s] (the CLI exits ${code})`);
      if (code !== 0) return reject(new Error(`pgmaint enqueue ${name} exited ${code}: ${err}\n${out.slice(-2000)}`));
      const outcome = JSON.parse(out) as { state: string; result: Record<string, any> };
      resolve({ ms, result: outcome.result });
    });
  });
}
