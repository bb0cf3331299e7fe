// `enqueue --wait` in the direct mode: the run's progress and end come from its queue's
// events stream (a connection that waits through an outage), and every second its state is
// read on the bounded connection as well. So a Redis that freezes or goes away ends the wait
// within seconds (the caller's `ask` turns that into exit 3: the run was enqueued and may
// still run), and an end the stream did not bring still ends it.
import type { QueueEvents } from 'bullmq';
import type { JobQueue } from '../runner/queues.ts';
import type { JobEnd } from './client.ts';

/** How often the run's state is read while it has not ended. */
const POLL_MS = 1000;

/** After a read saw the run end, how long the events stream has to bring its last progress lines and its end. */
const END_EVENT_GRACE_MS = 1000;

/** Resolves with how the run ended; rejects with what `ask` makes of a Redis that does not answer. */
export function followRun(
  queue: JobQueue,
  id: string,
  events: QueueEvents,
  ask: <T>(p: Promise<T>) => Promise<T>,
): Promise<JobEnd> {
  const read = async (): Promise<JobEnd> => {
    const state = await ask(queue.getJobState(id));
    const job = await ask(queue.getJob(id));
    if (!job || (state !== 'completed' && state !== 'failed'))
      throw new Error(`${queue.name} job ${id} is gone from Redis before its end could be read (state ${state})`);
    return state === 'completed'
      ? { id, state, result: job.returnvalue }
      : { id, state, failedReason: job.failedReason ?? null, attemptsMade: job.attemptsMade };
  };
  return new Promise<JobEnd>((resolve, reject) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const settle = (outcome: Promise<JobEnd>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      events.off('completed', onEnd);
      events.off('failed', onEnd);
      outcome.then(resolve, reject);
    };
    const onEnd = ({ jobId }: { jobId: string }) => {
      if (jobId === id) settle(read());
    };
    events.on('completed', onEnd);
    events.on('failed', onEnd);
    const poll = async () => {
      try {
        const state = await ask(queue.getJobState(id));
        if (settled) return;
        if (state === 'completed' || state === 'failed') {
          timer = setTimeout(() => settle(read()), END_EVENT_GRACE_MS);
          return;
        }
        if (state === 'unknown') settle(read());
        else timer = setTimeout(() => void poll(), POLL_MS);
      } catch (err) {
        settle(Promise.reject(err));
      }
    };
    timer = setTimeout(() => void poll(), POLL_MS);
  });
}
