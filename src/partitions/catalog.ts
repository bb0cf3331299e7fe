// The catalog facts both partition jobs work from: a policy's parent checked against
// the catalog and its partitions with their bounds. Bounds are read from
// pg_class.relpartbound, never recomputed from partition names.
import { DateTime } from 'luxon';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import type { PartitionPolicy } from '../core/partition-policy.ts';
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

/** A bound as a SQL literal of the key's type. */
export function boundLiteral(t: DateTime, keyType: KeyType): string {
  if (keyType === 'timestamptz') return quoteLiteral(t.toISO({ suppressMilliseconds: true })!);
  if (keyType === 'date') return quoteLiteral(t.toISODate()!);
  return quoteLiteral(t.toFormat('yyyy-MM-dd HH:mm:ss'));
}
