// A worker process for the I/O-heavy backup jobs: put it on the machine that holds
// BACKUP_DIR and reads the WAL archive (it also needs the PostgreSQL binaries for
// the drill's scratch instance). Concurrency per job comes from jobs.<name>.concurrency.
import { BACKUP_JOBS } from '../jobs/index.ts';
import { runWorkerProcess } from '../src/cli/roles.ts';

await runWorkerProcess({ only: BACKUP_JOBS });
