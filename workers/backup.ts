// A worker process for the jobs that need something of the machine besides SQL: BACKUP_DIR,
// the WAL archive, PostgreSQL's binaries, pgBackRest, the bucket (each job's `needs`). Put it
// on the machine that holds BACKUP_DIR and reads the WAL archive. It refuses to start,
// exit 2, when this machine lacks a need of one of its jobs, naming the need and the variable.
// Concurrency per job comes from jobs.<name>.concurrency.
import { jobs } from '../jobs/index.ts';
import { exitWithError } from '../src/cli/main.ts';
import { runWorkerProcess } from '../src/cli/roles.ts';
import { needsMachine } from '../src/runner/needs.ts';

await runWorkerProcess({ only: jobs.filter(needsMachine).map((j) => j.name), origin: 'workers/backup.ts' }).catch(
  exitWithError,
);
