// After a failed demo test: the PostgreSQL (a session of its own) and Redis a demo may have
// left running in its directory, stopped by the PIDs in their pid files, when those PIDs
// are still that server.
import path from 'node:path';
import { isRunning, readPidFile } from '../../src/dev/processes.ts';

/** `dataDirs`: PostgreSQL data directories; `redisDirs`: directories with a redis.pid. */
export function stopLeftovers(dataDirs: string[], redisDirs: string[] = []): void {
  for (const dataDir of dataDirs) {
    const pid = readPidFile(path.join(dataDir, 'postmaster.pid'));
    // SIGQUIT: PostgreSQL's immediate shutdown.
    if (pid && isRunning(pid, (args) => args.includes(dataDir))) process.kill(pid, 'SIGQUIT');
  }
  for (const dir of redisDirs) {
    const pid = readPidFile(path.join(dir, 'redis.pid'));
    if (pid && isRunning(pid, (args) => args.join(' ').includes('redis-server'))) process.kill(pid, 'SIGTERM');
  }
}
