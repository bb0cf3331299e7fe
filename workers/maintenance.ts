// A worker process for everything except the backup jobs (light, SQL-only jobs).
import { BACKUP_JOBS, jobs } from '../jobs/index.ts';
import { runWorkerProcess } from '../src/cli/roles.ts';

await runWorkerProcess({ only: jobs.map((j) => j.name).filter((n) => !BACKUP_JOBS.includes(n)) });
