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
  /** The same bounds in epoch milliseconds, when the catalog reading gave them. */
  fromMs?: number | null;
  toMs?: number | null;
  /** A DEFAULT partition's size on disk, as the catalog reading saw it: 0 means it never held a row. */
  bytes?: number | null;
  detachPending: boolean;
}

/** A bound in epoch milliseconds, from the catalog's number or the DateTime. */
export const boundMs = (p: ExistingPartition, side: 'from' | 'to'): number | null =>
  (side === 'from' ? p.fromMs : p.toMs) ?? p[side]?.toMillis() ?? null;

interface RawPartition {
  schema: string;
  name: string;
  bound: string;
  pending: boolean;
  /** A DEFAULT partition's size on disk: 0 means it never held a row. */
  bytes: number | null;
}

/** The oids and xmins of the known bounds' keys, as two parallel arrays. */
function versionArrays(bounds: Map<string, string> | undefined): [string[], string[]] {
  const keys = [...(bounds?.keys() ?? [])].map((k) => k.split('/'));
  return [keys.map((k) => k[0]!), keys.map((k) => k[1]!)];
}

/** '2026-11-01 00:00:00+00' (a timestamptz bound as printed under TimeZone UTC) in epoch ms, or undefined. */
function utcLiteralMs(literal: string): number | undefined {
  const m = /^'(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d{1,6})?\+00'$/.exec(literal);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, sec, frac] = m.map(Number) as number[];
  return Date.UTC(y!, mo! - 1, d!, h!, mi!, sec!) + Math.floor((frac || 0) * 1000);
}

/**
 * A partition whose bounds are DateTimes only when asked for: at fleet scale the
 * steady-state check works on the milliseconds, and luxon is what costs.
 */
class CatalogPartition implements ExistingPartition {
  readonly isDefault: boolean;
  readonly detachPending: boolean;
  readonly fromMs: number | null;
  readonly toMs: number | null;
  readonly bytes: number | null;
  private cached?: [DateTime | null, DateTime | null];

  constructor(
    readonly schema: string,
    readonly name: string,
    raw: RawPartition,
    private readonly literals: [string, string] | null,
    private readonly keyType: KeyType,
    private readonly zone: string,
  ) {
    this.isDefault = literals === null;
    this.detachPending = raw.pending;
    this.bytes = raw.bytes === null ? null : Number(raw.bytes);
    const fast = keyType === 'timestamptz' && literals ? literals.map(utcLiteralMs) : [undefined, undefined];
    this.fromMs = fast[0] ?? this.from?.toMillis() ?? null;
    this.toMs = fast[1] ?? this.to?.toMillis() ?? null;
  }

  private bounds(): [DateTime | null, DateTime | null] {
    if (!this.cached) {
      const [lo, hi] = this.literals ?? ['', ''];
      this.cached = this.literals
        ? [parseBound(lo, this.keyType, this.zone), parseBound(hi, this.keyType, this.zone)]
        : [null, null];
    }
    return this.cached;
  }

  get from(): DateTime | null {
    return this.bounds()[0];
  }

  get to(): DateTime | null {
    return this.bounds()[1];
  }
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

/**
 * Every policy's parent in two catalog queries, for any number of parents: the parents
 * (key, owner), then all their partitions with bounds. The session's TimeZone must be
 * UTC. A policy that does not fit its table gets its PermanentJobError in its place.
 */
export async function readParents(
  client: pg.ClientBase,
  policies: readonly PartitionPolicy[],
  opts: {
    /** Bounds already deparsed, by partition "oid/xmin": one map per database, kept by the caller. */
    bounds?: Map<string, string>;
  } = {},
): Promise<(ParentInfo | PermanentJobError)[]> {
  if (opts.bounds && opts.bounds.size > 200_000) opts.bounds.clear();
  const names = policies.map((p) => p.table.split('.') as [string, string]);
  // Joins over the whole fleet, not a subquery per parent.
  // Named, so that each session plans these catalog joins once, not at every reading:
  // planning them cost more of the server's CPU than running them.
  const { rows: parents } = await client.query<ParentRow>({
    name: 'pgmaint-read-parents',
    text: `select c.oid, c.relkind, pg_get_userbyid(c.relowner) as owner, pt.partstrat as strategy,
            case when pt.partnatts = 1 then array[key.attname::text] else
              (select array_agg(a.attname::text order by k.ord) from unnest(pt.partattrs) with ordinality k(attnum, ord)
                 join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum) end as keycols,
            format_type(col.atttypid, null) as keytype
       from unnest($1::text[], $2::text[], $3::text[]) with ordinality w(nsp, rel, col, ord)
       left join pg_namespace n on n.nspname = w.nsp
       left join pg_class c on c.relnamespace = n.oid and c.relname = w.rel
       left join pg_partitioned_table pt on pt.partrelid = c.oid
       left join pg_attribute key on key.attrelid = c.oid and key.attnum = pt.partattrs[0]
       left join pg_attribute col on col.attrelid = c.oid and col.attname = w.col and not col.attisdropped
      order by w.ord`,
    values: [names.map((n) => n[0]), names.map((n) => n[1]), policies.map((p) => p.column)],
  });
  const oids = parents.flatMap((p) => (p.oid === null ? [] : [p.oid]));
  // Deparsing a bound is most of the reading's cost; a partition's bound is fixed while
  // its pg_class row stays the same version (oid and xmin), so known ones are not asked.
  const { rows: children } = await client.query<RawPartition & { parent: number; version: string }>({
    name: 'pgmaint-read-partitions',
    text: `select i.inhparent as parent, n.nspname as schema, c.relname as name, i.inhdetachpending as pending,
            c.oid || '/' || c.xmin as version,
            case when k.oid is null then pg_get_expr(c.relpartbound, c.oid) end as bound,
            case when pt.partdefid = c.oid then pg_relation_size(c.oid) end as bytes
       from pg_inherits i join pg_class c on c.oid = i.inhrelid join pg_namespace n on n.oid = c.relnamespace
       join pg_partitioned_table pt on pt.partrelid = i.inhparent
       left join unnest($2::oid[], $3::xid[]) k(oid, xmin) on k.oid = c.oid and k.xmin = c.xmin
      where i.inhparent = any($1::oid[])`,
    values: [oids, ...versionArrays(opts.bounds)],
  });
  for (const c of children) {
    if (c.bound === null) c.bound = opts.bounds!.get(c.version)!;
    else opts.bounds?.set(c.version, c.bound);
  }
  const byParent = new Map<number, RawPartition[]>();
  for (const c of children) {
    const list = byParent.get(c.parent) ?? [];
    list.push(c);
    byParent.set(c.parent, list);
  }
  return parents.map((p, i) => {
    try {
      return parentInfo(policies[i]!, names[i]!, { ...p, parts: p.oid === null ? [] : (byParent.get(p.oid) ?? []) });
    } catch (err) {
      if (err instanceof PermanentJobError) return err;
      throw err;
    }
  });
}

/**
 * The parents whose DEFAULT partition holds a row, exactly (no statistics to trust):
 * one that takes no space on disk never held one; the others are asked, in one query.
 */
export async function defaultsHoldingRows(client: pg.ClientBase, parents: readonly ParentInfo[]): Promise<Set<number>> {
  const used = parents.flatMap((info) => {
    const def = info.partitions.find((x) => x.isDefault);
    return def && (def.bytes ?? 1) > 0 ? [{ oid: info.oid, rel: quoteQualified(def.schema, def.name) }] : [];
  });
  if (!used.length) return new Set();
  const { rows } = await client.query<{ oid: number }>(
    used.map((d) => `select ${d.oid}::oid as oid where exists (select from ${d.rel})`).join(' union all '),
  );
  return new Set(rows.map((r) => Number(r.oid)));
}

/** A parent's row in readParents' first query (its partitions come from the second). */
interface ParentRow {
  oid: number | null;
  relkind: string | null;
  owner: string | null;
  strategy: string | null;
  keycols: string[] | null;
  keytype: string | null;
}

function parentInfo(
  policy: PartitionPolicy,
  [schema, table]: [string, string],
  r: ParentRow & { parts: RawPartition[] },
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
    if (p.bound === 'DEFAULT') return new CatalogPartition(p.schema, p.name, p, null, keyType, policy.timeZone);
    const m = /^FOR VALUES FROM \((.+)\) TO \((.+)\)$/.exec(p.bound);
    if (!m) throw new PermanentJobError(`${p.schema}.${p.name}: unexpected partition bound ${p.bound}`, 'POLICY');
    return new CatalogPartition(p.schema, p.name, p, [m[1]!, m[2]!], keyType, policy.timeZone);
  });
  partitions.sort((a, b) => (boundMs(a, 'from') ?? -Infinity) - (boundMs(b, 'from') ?? -Infinity));
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

/**
 * Period boundaries of one interval in one zone, in epoch milliseconds, computed with
 * luxon once per run and shared by every parent of that kind: a fleet's steady-state
 * check then compares numbers.
 */
export class PeriodCalendar {
  private readonly kinds = new Map<
    string,
    { zone: string; interval: PartitionInterval; current: number; starts: number[]; known: Set<number> }
  >();

  constructor(private readonly now: DateTime) {}

  private kind(interval: PartitionInterval, zone: string) {
    const key = `${interval}/${zone}`;
    let k = this.kinds.get(key);
    if (!k) {
      const current = periodStart(this.now.setZone(zone), interval).toMillis();
      k = { zone, interval, current, starts: [current], known: new Set([current]) };
      this.kinds.set(key, k);
    }
    return k;
  }

  /** Computes boundaries until they reach `ms` on either side (at most ten thousand periods). */
  private extendTo(k: ReturnType<PeriodCalendar['kind']>, ms: number): void {
    for (let i = 0; k.starts[0]! > ms && i < 10_000; i++) {
      const earlier = periodStart(DateTime.fromMillis(k.starts[0]! - 1, { zone: k.zone }), k.interval).toMillis();
      k.starts.unshift(earlier);
      k.known.add(earlier);
    }
    for (let i = 0; k.starts.at(-1)! < ms && i < 10_000; i++) {
      const later = nextPeriod(DateTime.fromMillis(k.starts.at(-1)!, { zone: k.zone }), k.interval).toMillis();
      k.starts.push(later);
      k.known.add(later);
    }
  }

  /** Start of the period holding now. */
  current(interval: PartitionInterval, zone: string): number {
    return this.kind(interval, zone).current;
  }

  /** The start of the n-th period after the current one. */
  after(interval: PartitionInterval, zone: string, n: number): number {
    const k = this.kind(interval, zone);
    for (;;) {
      const at = k.starts.indexOf(k.current) + n;
      if (at < k.starts.length) return k.starts[at]!;
      this.extendTo(k, k.starts.at(-1)! + 1);
    }
  }

  /** Whether `ms` is a period boundary. */
  isBoundary(interval: PartitionInterval, zone: string, ms: number): boolean {
    const k = this.kind(interval, zone);
    this.extendTo(k, ms);
    return k.known.has(ms);
  }

  /** The boundaries from the one at or before `fromMs` through the first at or after `toMs`. */
  boundaries(interval: PartitionInterval, zone: string, fromMs: number, toMs: number): number[] {
    const k = this.kind(interval, zone);
    while (k.starts[0]! > fromMs) this.extendTo(k, fromMs);
    while (k.starts.at(-1)! < toMs) this.extendTo(k, toMs);
    let first = 0;
    while (k.starts[first + 1] !== undefined && k.starts[first + 1]! <= fromMs) first++;
    const last = k.starts.findIndex((b) => b >= toMs);
    return k.starts.slice(first, last + 1);
  }

  /** How many boundaries lie strictly between the current period's start and `ms`. */
  countAhead(interval: PartitionInterval, zone: string, ms: number): number {
    const k = this.kind(interval, zone);
    this.extendTo(k, ms);
    return k.starts.filter((b) => b > k.current && b < ms).length;
  }
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
