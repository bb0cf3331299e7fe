// A worker process serving every job kind, each at its configured concurrency.
import { runWorkerProcess } from '../src/cli/roles.ts';

await runWorkerProcess();
