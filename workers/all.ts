// A worker process serving every job kind, each at its configured concurrency.
import { runWorkerProcess } from '../src/roles.ts';

await runWorkerProcess();
