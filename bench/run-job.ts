// Benchmarks enqueue a job through the runner and wait for its result, timing it.
import { QueueEvents } from 'bullmq';
import type { Runtime } from '../src/runner/runtime.ts';

export interface JobRunner {
  (name: string, payload: object): Promise<{ ms: number; result: Record<string, any> }>;
  close(): Promise<void>;
}

export function jobRunner(rt: Runtime): JobRunner {
  const events = new Map<string, QueueEvents>();
  const run = async (name: string, payload: object) => {
    if (!events.has(name)) {
      const e = new QueueEvents(name, {
        connection: rt.connections.redis(`bench-${name}`),
        prefix: rt.config.redis.prefix,
      });
      await e.waitUntilReady();
      events.set(name, e);
    }
    const t0 = performance.now();
    const { job } = await rt.queues.enqueue(name, payload);
    const result = (await job.waitUntilFinished(events.get(name)!)) as Record<string, any>;
    return { ms: performance.now() - t0, result };
  };
  return Object.assign(run, {
    close: async () => {
      for (const e of events.values()) await e.close();
    },
  });
}
