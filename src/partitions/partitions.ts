// Partition policies and the catalog facts both partition jobs work from. Bounds are
// read from pg_class.relpartbound, never recomputed from partition names.
import { DateTime } from 'luxon';
import type pg from 'pg';
import { classifyError, coerceError, describeError, PermanentJobError } from '../core/errors.ts';
import type { PartitionInterval, PartitionPolicy } from '../core/partition-policy.ts';
import { quoteLiteral, quoteQualified } from '../core/sql.ts';

export type KeyType = 'timestamptz' | 'timestamp' | 'date';

export interface ExistingPartition {
  schema: string;
  name: string;
  isDefault: boolean;
  /** null for MINVALUE/MAXVALUE or DEFAULT. */
  from: DateTime | null;
  to: DateTime | null;
  detachPending: boolean;
}

export interface ParentInfo {
  schema: string;
  table: string;
  oid: number;
  owner: string;
  keyType: KeyType;
  partitions: ExistingPartition[];
}

/** A key value as PostgreSQL prints it (session TimeZone = UTC). */
export function parseKeyValue(text: string, keyType: KeyType, zone: string): DateTime {
  return parseBound(`'${text}'`, keyType, zone)!;
}

/** Parses a bound literal as the catalog prints it (session TimeZone = UTC). */
function parseBound(text: string, keyType: KeyType, zone: string): DateTime | null {
  if (/^(MINVALUE|MAXVALUE)$/i.test(text)) return null;
  const literal = /^'(.*)'$/.exec(text)?.[1] ?? text;
  if (keyType === 'timestamptz') return DateTime.fromSQL(literal, { zone: 'UTC', setZone: true }).setZone(zone);
  // timestamp/date carry wall-clock values: read them as wall-clock times in the zone.
  return DateTime.fromSQL(literal, { zone });
}

/** Validates the policy against the catalog and reads the partitions with their bounds. */
export async function readParent(client: pg.ClientBase, policy: PartitionPolicy): Promise<ParentInfo> {
  const [info] = await readParents(client, [policy]);
  if (info instanceof Error) throw info;
  return info!;
}

/** A parent as the catalog holds it, and whether its DEFAULT partition has any row. */
export type ParentSnapshot = ParentInfo & { defaultHasRows: boolean };

/**
 * Every policy's parent in one catalog query (its key, owner, partitions and bounds),
 * then one query that asks each DEFAULT partition whether it holds a row: two round
 * trips for any number of parents. The session's TimeZone must be UTC. A policy that
 * does not fit its table gets its PermanentJobError in its place.
 */
export async function readParents(
  client: pg.ClientBase,
  policies: readonly PartitionPolicy[],
): Promise<(ParentSnapshot | PermanentJobError)[]> {
  const names = policies.map((p) => p.table.split('.') as [string, string]);
  const { rows } = await client.query<{
    ord: string;
    oid: number | null;
    relkind: string | null;
    owner: string | null;
    strategy: string | null;
    keycols: string[] | null;
    keytype: string | null;
    parts: { schema: string; name: string; bound: string; pending: boolean }[];
  }>(
    `select w.ord, c.oid, c.relkind, pg_get_userbyid(c.relowner) as owner, pt.partstrat as strategy,
            (select array_agg(a.attname::text order by k.ord) from unnest(pt.partattrs) with ordinality k(attnum, ord)
               join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum) as keycols,
            (select format_type(a.atttypid, null) from pg_attribute a
              where a.attrelid = c.oid and a.attname = w.col and not a.attisdropped) as keytype,
            (select coalesce(json_agg(json_build_object('schema', pn.nspname, 'name', pc.relname,
                      'bound', pg_get_expr(pc.relpartbound, pc.oid), 'pending', i.inhdetachpending)), '[]')
               from pg_inherits i join pg_class pc on pc.oid = i.inhrelid
               join pg_namespace pn on pn.oid = pc.relnamespace
              where i.inhparent = c.oid) as parts
       from unnest($1::text[], $2::text[], $3::text[]) with ordinality w(nsp, rel, col, ord)
       left join pg_namespace n on n.nspname = w.nsp
       left join pg_class c on c.relnamespace = n.oid and c.relname = w.rel
       left join pg_partitioned_table pt on pt.partrelid = c.oid
      order by w.ord`,
    [names.map((n) => n[0]), names.map((n) => n[1]), policies.map((p) => p.column)],
  );
  const infos = rows.map((r, i) => {
    try {
      return parentInfo(policies[i]!, names[i]!, r);
    } catch (err) {
      if (err instanceof PermanentJobError) return err;
      throw err;
    }
  });
  // Emptiness of every DEFAULT partition, exactly and cheaply (no statistics to trust).
  const defaults = infos.flatMap((info) => {
    const def = info instanceof Error ? undefined : info.partitions.find((x) => x.isDefault);
    return def ? [quoteQualified(def.schema, def.name)] : [];
  });
  const hasRows = new Set<string>();
  if (defaults.length) {
    const { rows: found } = await client.query<{ rel: string }>(
      defaults.map((d) => `select ${quoteLiteral(d)} as rel where exists (select from ${d})`).join(' union all '),
    );
    for (const f of found) hasRows.add(f.rel);
  }
  return infos.map((info) => {
    if (info instanceof Error) return info;
    const def = info.partitions.find((x) => x.isDefault);
    return { ...info, defaultHasRows: def ? hasRows.has(quoteQualified(def.schema, def.name)) : false };
  });
}

function parentInfo(
  policy: PartitionPolicy,
  [schema, table]: [string, string],
  r: {
    oid: number | null;
    relkind: string | null;
    owner: string | null;
    strategy: string | null;
    keycols: string[] | null;
    keytype: string | null;
    parts: { schema: string; name: string; bound: string; pending: boolean }[];
  },
): ParentInfo {
  if (r.oid === null) throw new PermanentJobError(`${policy.table}: table does not exist`, 'POLICY');
  if (r.relkind !== 'p' || r.strategy !== 'r')
    throw new PermanentJobError(`${policy.table}: not RANGE-partitioned`, 'POLICY');
  if (r.keycols?.length !== 1 || r.keycols[0] !== policy.column) {
    throw new PermanentJobError(
      `${policy.table}: partitioned on (${r.keycols?.join(', ')}), not on ${policy.column}`,
      'POLICY',
    );
  }
  const keyType = (
    { 'timestamp with time zone': 'timestamptz', 'timestamp without time zone': 'timestamp', date: 'date' } as Record<
      string,
      KeyType
    >
  )[r.keytype ?? ''];
  if (!keyType)
    throw new PermanentJobError(
      `${policy.table}.${policy.column}: type ${r.keytype} does not fit a time interval`,
      'POLICY',
    );
  if (keyType === 'date' && policy.interval === 'hour')
    throw new PermanentJobError(
      `${policy.table}.${policy.column}: a date column cannot have hourly partitions`,
      'POLICY',
    );
  const partitions = r.parts.map((p): ExistingPartition => {
    if (p.bound === 'DEFAULT')
      return { schema: p.schema, name: p.name, isDefault: true, from: null, to: null, detachPending: p.pending };
    const m = /^FOR VALUES FROM \((.+)\) TO \((.+)\)$/.exec(p.bound);
    if (!m) throw new PermanentJobError(`${p.schema}.${p.name}: unexpected partition bound ${p.bound}`, 'POLICY');
    return {
      schema: p.schema,
      name: p.name,
      isDefault: false,
      from: parseBound(m[1]!, keyType, policy.timeZone),
      to: parseBound(m[2]!, keyType, policy.timeZone),
      detachPending: p.pending,
    };
  });
  partitions.sort((a, b) => (a.from?.toMillis() ?? -Infinity) - (b.from?.toMillis() ?? -Infinity));
  return { schema, table, oid: r.oid, owner: r.owner!, keyType, partitions };
}

/** Start of the period containing `t`, in the policy's zone. */
export function periodStart(t: DateTime, interval: PartitionInterval): DateTime {
  return t.startOf(interval, { useLocaleWeeks: false });
}

export function nextPeriod(t: DateTime, interval: PartitionInterval): DateTime {
  const unit = { hour: 'hours', day: 'days', week: 'weeks', month: 'months', quarter: 'quarters', year: 'years' }[
    interval
  ];
  // Periods are stepped from the period start: hours in absolute time, the rest in
  // local calendar time, so each lower bound is exactly the previous upper bound.
  return periodStart(t.plus({ [unit]: 1 }), interval);
}

export function partitionName(table: string, from: DateTime, interval: PartitionInterval): string {
  const suffix = {
    // Hours are named in UTC: a local name would repeat on the fall-back night.
    hour: from.toUTC().toFormat("yyyyMMdd'_'HH'z'"),
    day: from.toFormat('yyyyMMdd'),
    week: from.toFormat("kkkk'w'WW"),
    month: from.toFormat('yyyyMM'),
    quarter: from.toFormat("yyyy'q'q"),
    year: from.toFormat('yyyy'),
  }[interval];
  return `${table.slice(0, 63 - suffix.length - 2)}_p${suffix}`;
}

/** A bound as a SQL literal of the key's type. */
export function boundLiteral(t: DateTime, keyType: KeyType): string {
  if (keyType === 'timestamptz') return quoteLiteral(t.toISO({ suppressMilliseconds: true })!);
  if (keyType === 'date') return quoteLiteral(t.toISODate()!);
  return quoteLiteral(t.toFormat('yyyy-MM-dd HH:mm:ss'));
}

/** The policies of one target, optionally narrowed to some parents. */
export function policiesFor(
  ctx: { config: { partitions: PartitionPolicy[] } },
  target: string,
  tables?: string[],
): PartitionPolicy[] {
  const all = ctx.config.partitions.filter((p) => p.target === target);
  if (!tables) return all;
  const unknown = tables.filter((t) => !all.some((p) => p.table === t));
  if (unknown.length)
    throw new PermanentJobError(`tables: no partition policy for ${unknown.join(', ')} on target ${target}`, 'POLICY');
  return all.filter((p) => tables.includes(p.table));
}

/** Refusals for a payload's `tables`: each must have a policy on the target (with a
 * retention, for the retention job), checked when the job is asked for. */
export function tablesIssues(
  policies: PartitionPolicy[],
  target: string,
  tables: string[] | undefined,
  needRetention = false,
): { path: string; message: string }[] {
  const mine = policies.filter((p) => p.target === target && (!needRetention || p.retention));
  const known = mine.map((p) => p.table);
  return (tables ?? []).flatMap((t, i) =>
    known.includes(t)
      ? []
      : [
          {
            path: `tables.${i}`,
            message:
              `no partition policy${needRetention ? ' with a retention' : ''} for ${t} on target ${target} ` +
              `(known: ${known.join(', ') || 'none'})`,
          },
        ],
  );
}

/** The skip reason when withParentLock finds the parent taken. */
export const PARENT_LOCKED = 'another run holds this parent (advisory lock); skipped';

/**
 * Runs fn on one connection holding a session advisory lock for the parent, so two
 * runs (any job, any worker) never interleave on it; 'locked' when another holds it.
 * Session TimeZone is UTC so the catalog prints bounds in UTC.
 */
export async function withParentLock(
  pool: pg.Pool,
  table: string,
  fn: (client: pg.PoolClient) => Promise<void>,
): Promise<'done' | 'locked'> {
  const client = await pool.connect();
  const key = `pgmaint:partitions:${table}`;
  let zone: string | undefined;
  try {
    const { rows } = await client.query<{ ok: boolean; zone: string }>(
      `select current_setting('TimeZone') as zone, set_config('TimeZone', 'UTC', false) is not null and ` +
        `pg_try_advisory_lock(hashtext($1)) as ok`,
      [key],
    );
    zone = rows[0]!.zone;
    if (!rows[0]!.ok) return 'locked';
    try {
      await fn(client);
      return 'done';
    } finally {
      await client
        .query('select pg_advisory_unlock(hashtext($1)), set_config($2, $3, false)', [key, 'TimeZone', zone])
        .catch(() => undefined);
      zone = undefined;
    }
  } finally {
    if (zone) await client.query(`select set_config('TimeZone', $1, false)`, [zone]).catch(() => undefined);
    client.release();
  }
}

/** A policy's failure, kept in its result so one policy does not stop the others. */
export interface PolicyOutcome {
  table: string;
  error?: string;
  retryable?: boolean;
}

export function recordPolicyError(result: PolicyOutcome, thrown: unknown): void {
  const err = coerceError(thrown);
  result.error = describeError(err);
  result.retryable = classifyError(err) === 'retryable';
}

/** Fails the job at the end if any policy failed: retried only when every failure
 * is worth a retry (a lock timeout, say). */
export function throwIfPoliciesFailed(job: string, results: PolicyOutcome[]): void {
  const failed = results.filter((r) => r.error);
  if (!failed.length) return;
  const message = `${job} failed for ${failed.map((f) => `${f.table} (${f.error})`).join(', ')}`;
  if (failed.some((f) => !f.retryable)) throw new PermanentJobError(message);
  throw new Error(message);
}
