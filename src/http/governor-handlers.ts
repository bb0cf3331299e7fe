// Holds by hand on governed runs (docs/governor.md), for the admin: POST
// /api/governor/throttle holds a job, a queue or every governed job (the maintenance
// pause) for a while; POST /api/governor/resume ends such a hold. Every refusal names the
// field and says why.
import { z } from 'zod';
import { isGoverned } from '../runner/governor-port.ts';
import type { Runtime } from '../runner/runtime.ts';
import { Controls, type Hold, type HoldScope, MAX_HOLD_MS, scopeText } from '../governor/controls.ts';
import type { ApiResponse, Handler } from './handlers.ts';

/** "30m", "2h", "1h30m", "90s", "1d": at least a second, at most seven days. */
export function parseDuration(text: string): number | undefined {
  const m = /^(?:(\d{1,3})d)?(?:(\d{1,4})h)?(?:(\d{1,6})m)?(?:(\d{1,7})s)?$/.exec(text);
  if (!m || !text) return undefined;
  const [d, h, min, s] = m.slice(1).map((x) => Number(x ?? 0)) as [number, number, number, number];
  return (((d * 24 + h) * 60 + min) * 60 + s) * 1000;
}

const noControl = /^[^\p{Cc}]*$/u;

const scopeFields = {
  /** A job: its id, or QUEUE/ID when ids of several queues could match. */
  job: z
    .string()
    .regex(/^(?:[a-z0-9][a-z0-9_-]{0,99}\/)?\d{1,20}$/, 'must be a job id or QUEUE/ID, e.g. vacuum-analyze/17')
    .optional(),
  queue: z.string().min(1).max(100).optional(),
  all: z.literal(true, { error: 'must be true (every governed job)' }).optional(),
};

const throttleBody = z
  .object({
    ...scopeFields,
    for: z
      .string()
      .refine((v) => {
        const ms = parseDuration(v);
        return ms !== undefined && ms >= 1000 && ms <= MAX_HOLD_MS;
      }, 'must be a duration from 1s to 7d, e.g. "30m", "2h", "1h30m"')
      .default('1h'),
    reason: z.string().max(200).regex(noControl, 'must be one line of text').optional(),
  })
  .strict();

const resumeBody = z.object(scopeFields).strict();

const refuse = (status: number, path: string, message: string): ApiResponse => ({
  status,
  body: { error: `${path}: ${message}`, issues: [{ path, message }] },
});

type Parsed<T> = { ok: T } | { refused: ApiResponse };

function parseBody<T extends z.ZodObject>(schema: T, body: unknown): Parsed<z.output<T>> {
  if (body !== undefined && (typeof body !== 'object' || body === null || Array.isArray(body)))
    return { refused: refuse(400, '(body)', 'must be a JSON object') };
  const parsed = schema.safeParse(body ?? {});
  if (parsed.success) return { ok: parsed.data };
  const known = Object.keys(schema.shape).join(', ');
  const issues = parsed.error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ path: k, message: `unknown field (known: ${known})` }))
      : [{ path: i.path.map(String).join('.') || '(body)', message: i.message }],
  );
  return {
    refused: {
      status: 400,
      body: { error: issues.map((i) => `${i.path}: ${i.message}`).join('; '), issues },
    },
  };
}

const governedQueues = (rt: Runtime) => rt.registry.names().filter((n) => isGoverned(rt.registry.get(n)!.def));

const LIVE = new Set(['active', 'waiting', 'delayed', 'prioritized', 'waiting-children']);

/** The scope a request names: exactly one of job, queue or all; a job must be waiting or running. */
async function scopeOf(rt: Runtime, b: z.output<typeof resumeBody>): Promise<Parsed<HoldScope>> {
  const given = (['job', 'queue', 'all'] as const).filter((k) => b[k] !== undefined);
  if (given.length !== 1)
    return {
      refused: refuse(
        400,
        given.length ? given.join(', ') : '(body)',
        'give exactly one of job (an id or QUEUE/ID), queue (a job name) or all (true)',
      ),
    };
  const governed = governedQueues(rt);
  const knownQueue = (q: string, path: string): ApiResponse | undefined => {
    if (!rt.registry.get(q)) return refuse(400, path, rt.registry.unknownJob(q));
    if (!governed.includes(q))
      return refuse(400, path, `${q} is not governed: it never waits for load (governed: ${governed.join(', ')})`);
    return undefined;
  };
  if (b.all) return { ok: { kind: 'all' } };
  if (b.queue !== undefined) {
    const refused = knownQueue(b.queue, 'queue');
    return refused ? { refused } : { ok: { kind: 'queue', queue: b.queue } };
  }
  const [queue, id] = b.job!.includes('/') ? b.job!.split('/') : [undefined, b.job!];
  if (queue !== undefined) {
    const refused = knownQueue(queue, 'job');
    if (refused) return { refused };
  }
  const found: string[] = [];
  for (const q of queue ? [queue] : governed) {
    const state = await rt.queues.get(q).getJobState(id!);
    if (LIVE.has(state)) found.push(q);
  }
  if (!found.length)
    return {
      refused: refuse(
        404,
        'job',
        `no waiting or running job ${id} in ${queue ? `queue ${queue}` : 'the governed queues'} ` +
          '(pgmaint status lists the runs)',
      ),
    };
  if (found.length > 1)
    return {
      refused: refuse(
        400,
        'job',
        `${id} is a job of ${found.length} queues (${found.map((q) => `${q}/${id}`).join(', ')}); give QUEUE/ID`,
      ),
    };
  return { ok: { kind: 'job', queue: found[0]!, id: id! } };
}

/** A hold as the API shows it. */
export function holdView(h: Hold) {
  return {
    scope: h.scope,
    what: scopeText(h.scope),
    reason: h.reason,
    since: new Date(h.since).toISOString(),
    until: new Date(h.until).toISOString(),
  };
}

export type HoldView = ReturnType<typeof holdView>;

const controls = (rt: Runtime) => new Controls(rt.queues.connection, rt.config.redis.prefix);

export const throttle: Handler = async ({ rt }, req) => {
  const body = parseBody(throttleBody, req.body);
  if ('refused' in body) return body.refused;
  const scope = await scopeOf(rt, body.ok);
  if ('refused' in scope) return scope.refused;
  const hold = await controls(rt).set(scope.ok, parseDuration(body.ok.for)!, body.ok.reason ?? null);
  return { status: 200, body: { hold: holdView(hold) } };
};

export const resume: Handler = async ({ rt }, req) => {
  const body = parseBody(resumeBody, req.body);
  if ('refused' in body) return body.refused;
  const scope = await scopeOf(rt, body.ok);
  if ('refused' in scope) return scope.refused;
  const c = controls(rt);
  const ended = await c.clear(scope.ok);
  if (!ended) {
    const left = (await c.list()).map((h) => scopeText(h.scope));
    return refuse(
      404,
      body.ok.all ? 'all' : body.ok.queue !== undefined ? 'queue' : 'job',
      `nothing to resume: no hold on ${scopeText(scope.ok)} (holds in force: ${left.join(', ') || 'none'})`,
    );
  }
  return { status: 200, body: { ended: holdView(ended) } };
};
