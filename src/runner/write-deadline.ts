// Every other change to a queue (Bull Board's retry, clean, promote, remove, pause, empty, …)
// is carried out by Redis in time or never, as adds are (add-deadline.ts): a client that
// stops waiting answers "nothing was changed", and the command it sent must not run when a
// frozen or paused Redis goes on.
//
// On a bounded connection (the API's and the board's), each BullMQ script that changes
// something is sent with Redis's clock read moments before as one more, last argument
// ("pgmaint-stamp:<ms>"). Its prelude takes the stamp off (the script sees its own
// arguments) and refuses, changing nothing, when Redis runs it more than ADD_GATE_MS after
// the stamp. The connection's command timeout (REDIS_COMMAND_TIMEOUT_MS, ADD_GATE_MS +
// ADD_ANSWER_MARGIN_MS) counts from the send, after the stamp came back: when the client
// gives up, Redis's deadline has passed. A script sent without a stamp is refused too.
import { ServiceUnavailableError } from '../core/errors.ts';
import { ADD_GATE_MS, ADD_SCRIPTS, bullmqScripts, redisNow } from './add-deadline.ts';
import type { RedisClient } from './connections.ts';
import { redisFailure } from './redis-failure.ts';

/** BullMQ's scripts that only read: sent as they are. */
const READ_ONLY = new Set([
  'getCounts',
  'getCountsPerPriority',
  'getDependencyCounts',
  'getJobScheduler',
  'getJobs',
  'getMetrics',
  'getRanges',
  'getRateLimitTtl',
  'getState',
  'getStateV2',
  'isFinished',
  'isJobInList',
  'isMaxed',
  'paginate',
  'relayGet',
  'relayGetNamespaces',
  'relayReadInbox',
]);

const LATE = 'PGMAINT_WRITE_TOO_LATE';
const STAMP = 'pgmaint-stamp:';

const WRITE_PRELUDE = `-- pgmaint (src/runner/write-deadline.ts): refuse a change that runs too long after its stamp
do
  local pgmaintStamp = ARGV[#ARGV]
  if type(pgmaintStamp) ~= 'string' or string.sub(pgmaintStamp, 1, ${STAMP.length}) ~= '${STAMP}' then
    return redis.error_reply('${LATE} this change came without its stamp; nothing was changed')
  end
  table.remove(ARGV)
  local pgmaintNow = redis.call('TIME')
  local pgmaintLate = tonumber(pgmaintNow[1]) * 1000 + math.floor(tonumber(pgmaintNow[2]) / 1000)
    - tonumber(string.sub(pgmaintStamp, ${STAMP.length + 1}))
  if pgmaintLate > ${ADD_GATE_MS} then
    return redis.error_reply('${LATE} Redis ran this change ' .. pgmaintLate ..
      ' ms after its stamp (limit ${ADD_GATE_MS} ms); nothing was changed')
  end
end
`;

type Command = (...args: unknown[]) => Promise<unknown>;

const installed = new WeakSet<RedisClient>();

/**
 * Defines BullMQ's changing scripts on this bounded connection with the deadline prelude, and
 * stamps each call; before any queue on it loads them (BullMQ defines only what is missing).
 * `redis` names Redis in refusals ("Redis (REDIS_URL …)").
 */
export function installWriteDeadline(connection: RedisClient, redis: string): void {
  if (installed.has(connection)) return;
  const { version, scripts } = bullmqScripts();
  const commands = connection as unknown as Record<string, Command>;
  for (const script of Object.values(scripts)) {
    if (READ_ONLY.has(script.name) || ADD_SCRIPTS.includes(script.name)) continue;
    const name = `${script.name}:${version}`;
    connection.defineCommand(name, { numberOfKeys: script.keys, lua: WRITE_PRELUDE + script.content });
    const send = commands[name]!.bind(connection);
    // BullMQ calls client[name](args): an own property of the connection, so this is what it calls.
    commands[name] = async (...args: unknown[]) => {
      const flat = args.flat();
      const stamp = await redisNow(connection, String(flat[0])).catch((err: unknown) => {
        throw changeFailure(err, redis, script.name, false);
      });
      return send(...flat, `${STAMP}${stamp}`).catch((err: unknown) => {
        throw changeFailure(err, redis, script.name, true);
      });
    };
  }
  installed.add(connection);
}

/** Whether Redis refused a change for running after its deadline (or unstamped): nothing was changed. */
export function refusedAsLateChange(err: unknown): boolean {
  return err instanceof Error && err.message.includes(LATE);
}

/** Why a change failed, and whether it can have been carried out; other errors as they are. */
function changeFailure(err: unknown, redis: string, script: string, sent: boolean): unknown {
  if (refusedAsLateChange(err))
    return new ServiceUnavailableError(`${redis} ran BullMQ's ${script} after its deadline and refused it; try again`);
  const failure = redisFailure(err);
  if (!failure) return err;
  // Not sent, or sent after the stamp and given up on: Redis's deadline has passed first.
  if (!sent || /timed out|enableOfflineQueue options is false/.test((err as Error).message))
    return new ServiceUnavailableError(`${redis} ${failure}; nothing was changed (BullMQ's ${script}), try again`);
  return new ServiceUnavailableError(
    `${redis} closed the connection while BullMQ's ${script} was sent: it may have been carried out; look in ` +
      'Bull Board before trying again',
  );
}
