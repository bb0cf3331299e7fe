// Whether a process id is alive: leftovers (passfiles, scratch instances, restore claims)
// name the process that made them, and only a dead one's are taken over.

/** True when `pid` runs (EPERM: it runs under another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
