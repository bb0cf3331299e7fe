// Making a parent's new partitions: each is created as a plain table like the parent
// (its identity dropped, its owner and grants copied), rows stranded in the DEFAULT
// partition for its range moved in, and then ATTACHed, so the parent is held only in
// SHARE UPDATE EXCLUSIVE and inserts never wait on it.
import type { DateTime } from 'luxon';
import type pg from 'pg';
import { PermanentJobError } from '../core/errors.ts';
import type { PartitionPolicy } from '../core/partition-policy.ts';
import { quoteIdent, quoteQualified, withTransaction } from '../core/sql.ts';
import { boundLiteral, type ParentInfo } from './catalog.ts';
import { partitionName } from './periods.ts';
import type { Period } from './planner.ts';

/** A partition made by a run, as its result reports it. */
export interface CreatedPartition {
  name: string;
  from: string;
  to: string;
  movedRows: number;
}

/** What every new partition of a parent copies: read once per run and policy. */
export interface ParentTemplate {
  identityColumns: string[];
  /** Set when the parent's owner is not the role we run as. */
  owner: string | null;
  grants: { grantee: string | null; privilege: string }[];
  /** Quoted column list for moving rows out of the DEFAULT partition. */
  columns: string;
}

export async function readTemplate(client: pg.ClientBase, info: ParentInfo): Promise<ParentTemplate> {
  const { rows } = await client.query(
    `select (select coalesce(array_agg(attname::text order by attnum), '{}') from pg_attribute
              where attrelid = $1 and attidentity <> '' and not attisdropped) as identity,
            (select string_agg(quote_ident(attname), ', ' order by attnum) from pg_attribute where attrelid = $1 and
              attnum > 0 and not attisdropped and attgenerated = '') as columns,
            (select case when pg_get_userbyid(relowner) = current_user then null else pg_get_userbyid(relowner) end
              from pg_class where oid = $1) as owner,
            (select coalesce(json_agg(json_build_object('grantee', case when a.grantee = 0 then null else
              pg_get_userbyid(a.grantee) end, 'privilege', a.privilege_type)), '[]')
               from pg_class c, aclexplode(c.relacl) a where c.oid = $1 and a.grantee <> c.relowner) as grants`,
    [info.oid],
  );
  const r = rows[0];
  return { identityColumns: r.identity, owner: r.owner, grants: r.grants, columns: r.columns };
}

/** Creates and attaches a parent's partitions for these periods, in one transaction. */
export async function createPartitions(
  client: pg.ClientBase,
  info: ParentInfo,
  template: ParentTemplate,
  policy: PartitionPolicy,
  periods: Period[],
): Promise<CreatedPartition[]> {
  return withTransaction(client, async () => {
    await client.query(`set local lock_timeout = '${policy.lockTimeout}'`);
    const created: CreatedPartition[] = [];
    for (const { from, to } of periods) created.push(await addPartition(client, info, template, policy, from, to));
    return created;
  });
}

/** One partition: its table made like the parent, stranded DEFAULT rows moved in, attached. */
async function addPartition(
  client: pg.ClientBase,
  info: ParentInfo,
  template: ParentTemplate,
  policy: PartitionPolicy,
  from: DateTime,
  to: DateTime,
): Promise<CreatedPartition> {
  const parent = quoteQualified(info.schema, info.table);
  const name = partitionName(info.table, from, policy.interval);
  const part = quoteQualified(info.schema, name);
  const col = quoteIdent(policy.column);
  const lo = boundLiteral(from, info.keyType);
  const hi = boundLiteral(to, info.keyType);
  const def = info.partitions.find((x) => x.isDefault);
  const setup = [
    `create table ${part} (like ${parent} including all)`,
    // The parent's identity generates values for rows inserted through it; a copied
    // identity on the partition would be a second, diverging sequence.
    ...template.identityColumns.map((c) => `alter table ${part} alter column ${quoteIdent(c)} drop identity`),
    ...(template.owner ? [`alter table ${part} owner to ${quoteIdent(template.owner)}`] : []),
    ...template.grants.map((g) => `grant ${g.privilege} on ${part} to ${g.grantee ? quoteIdent(g.grantee) : 'public'}`),
  ];
  const attach = `alter table ${parent} attach partition ${part} for values from (${lo}) to (${hi})`;
  // One round trip for the statements that need no answer; the attach joins them when
  // there is no DEFAULT partition to move rows out of first.
  await client.query([...setup, ...(def ? [] : [attach])].join(';\n')).catch((err) => {
    if ((err as { code?: string }).code === '42P07')
      throw new PermanentJobError(
        `${info.schema}.${name} already exists and is not a partition of ${policy.table}; rename it or attach it`,
      );
    throw err;
  });
  let movedRows = 0;
  if (def) {
    const where = `${col} >= ${lo} and ${col} < ${hi}`;
    const dflt = quoteQualified(def.schema, def.name);
    const stranded = Number((await client.query(`select count(*) as n from ${dflt} where ${where}`)).rows[0].n);
    if (stranded > 0) {
      if (policy.defaultRows === 'fail') {
        throw new PermanentJobError(
          `${stranded} rows of ${def.schema}.${def.name} fall in [${from.toISO()}, ${to.toISO()}); policy ` +
            `defaultRows is "fail", so nothing was moved`,
        );
      }
      const cols = template.columns;
      const moved = await client.query(
        `with gone as (delete from ${dflt} where ${where} returning ${cols}) insert into ${part} (${cols}) select ` +
          `${cols} from gone`,
      );
      movedRows = moved.rowCount ?? 0;
      if (movedRows !== stranded) throw new Error(`moved ${movedRows} rows but counted ${stranded}; rolled back`);
    }
    await client.query(attach);
  }
  return { name: `${info.schema}.${name}`, from: from.toISO()!, to: to.toISO()!, movedRows };
}
