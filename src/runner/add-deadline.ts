// Adds that Redis carries out in time or never. A client that stops waiting for Redis
// (frozen, stalled on writes, unreachable) tells its caller "nothing was enqueued"; but
// the add it sent may sit in Redis's socket buffer, or in a paused client's queue, and
// run when Redis thaws. A timeout on the client cannot take it back, so the add itself
// carries its deadline into Redis:
//
// 1. Just before an add, the clock of the Redis that will run it is read (TIME), and the
//    job is stamped with it (its `timestamp`).
// 2. BullMQ's add scripts are loaded with a prelude (installAddDeadline): Redis compares its
//    own clock with the stamp and refuses the add, adding nothing, when more than
//    ADD_GATE_MS have passed. The check and the add are one script: nothing runs between.
// 3. The client waits ADD_GATE_MS + ADD_ANSWER_MARGIN_MS from when the stamp came back.
//    The stamp was taken before that, so by then Redis's deadline has passed: an add still
//    unanswered can no longer be carried out, and "nothing was enqueued" stays true.
//
// Both clocks are Redis's, so the clocks of the machines need not agree. What is left is an
// add that ran in time whose answer then takes longer than the margin to come back.
import { createRequire } from 'node:module';
import { Cluster } from 'ioredis';
import type { RedisClient } from './connections.ts';

/** Redis runs an add only this long after the Redis time it was stamped with. */
export const ADD_GATE_MS = 1000;
/** How much longer than the gate the client waits for the answer to an add. */
export const ADD_ANSWER_MARGIN_MS = 1000;
/** All of an ad-hoc enqueue (its reads, the clock reading, the add) is answered within this. */
export const ENQUEUE_BUDGET_MS = 4000;

const LATE = 'PGMAINT_ADD_TOO_LATE';

/** Every BullMQ script that creates a job; each reads the job's timestamp from its packed arguments. */
export const ADD_SCRIPTS: readonly string[] = ['addStandardJob', 'addDelayedJob', 'addPrioritizedJob', 'addParentJob'];

const GATE_PRELUDE = `-- pgmaint (src/runner/add-deadline.ts): refuse an add that runs too long after its stamp
do
  local pgmaintNow = redis.call('TIME')
  local pgmaintLate = tonumber(pgmaintNow[1]) * 1000 + math.floor(tonumber(pgmaintNow[2]) / 1000)
    - tonumber(cmsgpack.unpack(ARGV[1])[4])
  if pgmaintLate > ${ADD_GATE_MS} then
    return redis.error_reply('${LATE} Redis ran this add ' .. pgmaintLate ..
      ' ms after its stamp (limit ${ADD_GATE_MS} ms); nothing was added')
  end
end
`;

export interface BullScript {
  name: string;
  content: string;
  keys: number;
}

/** BullMQ's own scripts and version, from the build that `import 'bullmq'` loads. */
export function bullmqScripts(): { version: string; scripts: Record<string, BullScript> } {
  const require = createRequire(import.meta.url);
  return {
    version: (require('bullmq/dist/cjs/version.js') as { version: string }).version,
    scripts: require('bullmq/dist/cjs/scripts/index.js') as Record<string, BullScript>,
  };
}

const installed = new WeakSet<RedisClient>();

/**
 * Defines BullMQ's add commands on this connection with the deadline prelude, before any
 * queue on it loads them (BullMQ defines a command only when it is not defined yet). Fails
 * at start, not silently, when a BullMQ upgrade changed what the prelude relies on.
 */
export function installAddDeadline(connection: RedisClient): void {
  if (installed.has(connection)) return;
  const { version, scripts } = bullmqScripts();
  for (const name of ADD_SCRIPTS) {
    const script = scripts[name];
    const content = script?.content ?? '';
    if (
      !script ||
      !content.includes('local args = cmsgpack.unpack(ARGV[1])') ||
      !content.includes('local timestamp = args[4]')
    ) {
      throw new Error(
        `BullMQ ${version}: its ${name} script no longer reads the job's timestamp from ARGV[1][4]; ` +
          'src/runner/add-deadline.ts must be updated before adds can carry their deadline',
      );
    }
    connection.defineCommand(`${script.name}:${version}`, {
      numberOfKeys: script.keys,
      lua: GATE_PRELUDE + content,
    });
  }
  installed.add(connection);
}

/** Whether Redis refused an add for running after its deadline (nothing was added). */
export function refusedAsLate(err: unknown): boolean {
  return err instanceof Error && err.message.includes(LATE);
}

/** Redis's clock in ms, read from the node that holds `key` (a Cluster's nodes each have their own). */
export async function redisNow(connection: RedisClient, key: string): Promise<number> {
  const [seconds, micros] =
    connection instanceof Cluster
      ? ((await connection.eval("return redis.call('TIME')", 1, key)) as [string, string])
      : await connection.time();
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
}
