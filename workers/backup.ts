// A worker process for the I/O-heavy backup queue only: put it on the machine
// that holds BACKUP_DIR; its concurrency comes from jobs.backup.concurrency (default 1).
import { runWorkerProcess } from '../src/roles.ts';

await runWorkerProcess({ only: ['backup'] });
