// A worker process for everything except backups (light, SQL-only jobs).
import { jobs } from '../jobs/index.ts';
import { runWorkerProcess } from '../src/roles.ts';

await runWorkerProcess({ only: jobs.map((j) => j.name).filter((n) => n !== 'backup') });
