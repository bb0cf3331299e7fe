// A worker process serving every job kind, each at its configured concurrency. On a
// machine that lacks what some jobs need (BACKUP_DIR, PostgreSQL's binaries, …) it leaves
// their queues and says which, in a warning at start (docs/operations.md#which-worker-serves-what).
import { exitWithError } from '../src/cli/main.ts';
import { runWorkerProcess } from '../src/cli/roles.ts';

await runWorkerProcess().catch(exitWithError);
