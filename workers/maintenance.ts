// A worker process for the jobs that need nothing of the machine but SQL (no `needs`): it
// runs without BACKUP_DIR, PostgreSQL's binaries or the bucket's credentials.
import { jobs } from '../jobs/index.ts';
import { exitWithError } from '../src/cli/main.ts';
import { runWorkerProcess } from '../src/cli/roles.ts';
import { needsMachine } from '../src/runner/needs.ts';

await runWorkerProcess({
  only: jobs.filter((j) => !needsMachine(j)).map((j) => j.name),
  origin: 'workers/maintenance.ts',
}).catch(exitWithError);
