// Processes named by a pid file (postmaster.pid, redis.pid, the demo's lock): is the PID
// still the process the file meant, or a number the system has since given to another?
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** Whether a process with this PID exists (one we may not signal counts). */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The PID's command line from /proc: its arguments, [] for a zombie or a process gone,
 * undefined where /proc cannot tell (not Linux).
 */
export function commandLine(pid: number): string[] | undefined {
  if (!fs.existsSync('/proc/self/cmdline')) return undefined;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** Whether the PID is alive and its command line passes `test` (taken on trust where /proc cannot tell). */
export function isRunning(pid: number, test: (args: string[]) => boolean): boolean {
  if (!isAlive(pid)) return false;
  const args = commandLine(pid);
  return args === undefined || (args.length > 0 && test(args));
}

/** The first line of a pid file as a PID, or undefined when there is no file or no number in it. */
export function readPidFile(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').split('\n')[0]!.trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Waits until `gone()` holds, up to `ms`; answers whether it did. */
export async function waitUntilGone(gone: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(100)) if (gone()) return true;
  return gone();
}
