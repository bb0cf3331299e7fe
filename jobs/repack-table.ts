// repack-table: removes table bloat online with pg_repack (Debian postgresql-15-repack:
// the extension in the database and its client here), one table at a time: the tables
// the payload names, or, when pgstattuple is installed, those whose dead and free space
// is over a threshold. pg_repack rebuilds the table beside the live one and swaps them
// under a short ACCESS EXCLUSIVE lock; it waits at most lockWaitSeconds for that lock and
// then gives up on the table rather than cancel the application's queries. Refused when
// the extension is missing or its version differs from the client's; never falls back
// to VACUUM FULL. A table pg_repack cannot take (no primary key or NOT NULL unique index)
// is skipped before it is called; pg_repack gives up on some tables with a warning and
// exit status 0, so a table counts as repacked only when its file was swapped.
import { z } from 'zod';
import { GovernorDeferredError, PermanentJobError } from '../src/core/errors.ts';
import { governorField } from '../src/core/governor-policy.ts';
import { binPath, type RunOptions, runProcess } from '../src/core/proc.ts';
import { pgOptions, repackSettings } from '../src/core/gentle.ts';
import { redact } from '../src/core/redact.ts';
import { qualifiedName, extensionsOf, missingExtension } from '../src/core/sql.ts';
import { defineJob, type JobContext, type JobResult, targetField } from '../src/runner/job-definition.ts';

export const payload = z.object({
  target: targetField,
  /** Tables (schema.table) to repack; without it, those over bloatPercent (needs pgstattuple). */
  tables: z.array(qualifiedName).max(100).optional(),
  /** Dead tuples plus free space as a share of the table (pgstattuple_approx), in percent. */
  bloatPercent: z.number().min(1).max(99).default(30),
  /** Tables smaller than this are left alone. */
  minBytes: z
    .number()
    .int()
    .min(0)
    .default(100 * 1024 * 1024),
  /** pg_repack's wait for its short exclusive lock; then it gives up on the table (it never kills sessions). */
  lockWaitSeconds: z.number().int().min(1).max(3600).default(60),
  /** Stop starting tables after this long; the running one is stopped at it. */
  budgetSeconds: z
    .number()
    .int()
    .min(60)
    .max(86_400)
    .default(4 * 3600),
  dryRun: z.boolean().default(false),
  /** The load governor's keys for this run (docs/governor.md). */
  governor: governorField,
});

const job = defineJob({
  name: 'repack-table',
  description:
    'pg_repack of the named tables, or of those over a bloat threshold (pgstattuple), online and one at a time, ' +
    'reporting size before and after; refuses when the extension or client is missing or their versions differ.',
  payload,
  defaults: { attempts: 1, backoffMs: 60_000, timeoutMs: 12 * 3_600_000, concurrency: 1, heavy: true },
  needs: { pgBinaries: { tools: ['pg_repack'], why: "pg_repack's client rewrites the table" } },
  deduplicate: true,
  async handler(ctx, p) {
    const deadline = Date.now() + p.budgetSeconds * 1000;
    const unkeyed = new Set<string>();
    const { candidates, extVersion } = await ctx.withClient(async (client) => {
      const { database, versions } = await extensionsOf(client);
      const installed = versions.get('pg_repack');
      if (installed === undefined)
        throw missingExtension(
          database,
          'pg_repack',
          ' (Debian postgresql-15-repack); nothing was done, and VACUUM FULL is never used instead',
        );
      if (!p.tables && !versions.has('pgstattuple'))
        throw new PermanentJobError(
          'tables: name the tables to repack, or install pgstattuple so bloated ones can be found',
          'EXTENSION',
        );
      const { rows: found } = await client.query<{
        table: string;
        bytes: number;
        bloat: number | null;
        named: boolean;
        keyed: boolean;
      }>(
        `select quote_ident(n.nspname) || '.' || quote_ident(c.relname) as table,
                pg_total_relation_size(c.oid)::float8 as bytes, null::float8 as bloat,
                n.nspname || '.' || c.relname = any($1::text[]) as named,
                -- pg_repack's own test (its view repack.primary_keys): a valid unique index, not partial,
                -- of columns only (no expression), every one NOT NULL
                exists (select 1 from pg_index i
                         where i.indrelid = c.oid and i.indisunique and i.indisvalid and i.indpred is null
                           and 0 <> all(i.indkey)
                           and not exists (select 1 from pg_attribute a where a.attrelid = i.indrelid
                                             and a.attnum = any(i.indkey) and not a.attnotnull)) as keyed
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast', 'repack')
            and ($1::text[] is null or n.nspname || '.' || c.relname = any($1::text[]))`,
        [p.tables ?? null],
      );
      const missing = (p.tables ?? []).filter((t) => !found.some((f) => f.named && f.table.replace(/"/g, '') === t));
      if (missing.length)
        throw new PermanentJobError(`tables: ${missing.join(', ')}: no such table in database ${database}`, 'POLICY');
      const candidates: { table: string; bytes: number; bloatPercent: number | null; reason: string }[] = [];
      for (const f of found) {
        if (!f.keyed) unkeyed.add(f.table);
        if (f.named) {
          candidates.push({ table: f.table, bytes: f.bytes, bloatPercent: null, reason: 'named in the payload' });
          continue;
        }
        if (f.bytes < p.minBytes) continue;
        const { rows: st } = await client.query<{ bloat: number }>(
          `select (dead_tuple_percent + approx_free_percent)::float8 as bloat from pgstattuple_approx($1::regclass)`,
          [f.table],
        );
        const bloat = st[0]!.bloat;
        if (bloat >= p.bloatPercent)
          candidates.push({
            table: f.table,
            bytes: f.bytes,
            bloatPercent: Math.round(bloat * 10) / 10,
            reason: `dead and free space ${bloat.toFixed(1)} % ≥ ${p.bloatPercent} % (pgstattuple_approx)`,
          });
      }
      return { candidates, extVersion: installed };
    });

    const clientVersion = await repackClientVersion();
    if (clientVersion !== extVersion)
      throw new PermanentJobError(
        `pg_repack client ${clientVersion} and extension ${extVersion} differ: install the same version of both ` +
          '(the package that provides the extension provides the client)',
        'EXTENSION',
      );
    for (const c of candidates) await ctx.log(`candidate ${c.table}: ${c.reason}`);
    const repacked: {
      table: string;
      bytesBefore: number;
      bytesAfter: number;
      seconds: number;
      /** What pg_repack warned about while it still repacked the table (an invalid index it left out, …). */
      warnings: string[];
    }[] = [];
    const skipped: { table: string; reason: string }[] = [];
    const left: string[] = [];
    const cleaned: string[] = [];
    for (const c of candidates.filter((x) => unkeyed.has(x.table))) {
      skipped.push({ table: c.table, reason: NO_KEY });
      await ctx.log(`skipped ${c.table}: ${NO_KEY}`);
    }
    if (!p.dryRun) {
      const runnable = candidates.filter((x) => !unkeyed.has(x.table));
      for (const [n, c] of runnable.entries()) {
        ctx.signal.throwIfAborted();
        if (deadline - Date.now() < 60_000) {
          left.push(...runnable.slice(n).map((x) => x.table));
          await ctx.log(`budget of ${p.budgetSeconds}s nearly spent; left: ${left.join(', ')}`);
          break;
        }
        // A unit: one table. Held past the window or the budget, the rest is left for the next run.
        const deferred = await ctx.governor.gate(`pg_repack ${c.table}`, { deadline: deadline - 60_000 }).then(
          () => undefined,
          (err: unknown) => {
            if (err instanceof GovernorDeferredError) return err.message;
            throw err;
          },
        );
        if (deferred) {
          left.push(...runnable.slice(n).map((x) => x.table));
          await ctx.log(`${deferred}; left: ${left.join(', ')}`);
          break;
        }
        await ctx.progress(10 + (85 * n) / runnable.length, `pg_repack ${c.table}`);
        const t0 = Date.now();
        const size = async () =>
          Number((await ctx.pool.query(`select pg_total_relation_size($1::regclass) as b`, [c.table])).rows[0].b);
        const bytesBefore = await size();
        const fileBefore = await fileOf(ctx, c.table);
        // A pg_repack that was killed (with its worker) leaves its trigger on the live table, logging
        // every write into repack.log_<oid> for ever: cleaned here the way pg_repack cleans after
        // its own errors, when no pg_repack is running.
        const leftover = await cleanLeftover(ctx, c.table);
        if (leftover === 'busy') {
          skipped.push({ table: c.table, reason: 'another pg_repack is running against this database' });
          continue;
        }
        if (leftover === 'cleaned') cleaned.push(c.table);
        const budget = AbortSignal.any([ctx.signal, AbortSignal.timeout(deadline - Date.now())]);
        // pg_repack says why it gave up on a table in a WARNING (or an INFO "Skipping …"), and may
        // still exit 0.
        const warnings: string[] = [];
        const onLine = (line: string) => {
          const w = /^(?:WARNING:\s*(.*)|INFO:\s*(skipping\b.*))$/i.exec(line.trim());
          if (w) warnings.push(redact(w[1] ?? w[2]!));
        };
        try {
          await runProcess(
            binPath('pg_repack'),
            [`--table=${c.table}`, `--wait-timeout=${p.lockWaitSeconds}`, '--no-kill-backend', '--no-order'],
            { ...gentleChild(ctx), signal: budget, onStderrLine: onLine, onStdoutLine: onLine },
          );
        } catch (err) {
          const message = (err as Error).message;
          if (ctx.signal.aborted) throw err;
          skipped.push({ table: c.table, reason: budget.aborted ? 'the time budget ran out' : message.slice(-300) });
          await ctx.log(`skipped ${c.table}: ${skipped.at(-1)!.reason}`);
          if (budget.aborted) {
            left.push(...runnable.slice(n + 1).map((x) => x.table));
            break;
          }
          continue;
        }
        // Repacked means swapped into a new file; anything else is a table left as it was.
        if ((await fileOf(ctx, c.table)) === fileBefore) {
          const reason = `pg_repack did not repack it: ${warnings.join('; ') || 'it exited 0 without a word'}`;
          skipped.push({ table: c.table, reason });
          await ctx.log(`skipped ${c.table}: ${reason}`);
          continue;
        }
        const bytesAfter = await size();
        repacked.push({ table: c.table, bytesBefore, bytesAfter, seconds: (Date.now() - t0) / 1000, warnings });
        await ctx.log(
          `repacked ${c.table}: ${bytesBefore} → ${bytesAfter} bytes` +
            (warnings.length ? ` (pg_repack warned: ${warnings.join('; ')})` : ''),
        );
      }
    }
    return {
      version: extVersion,
      dryRun: p.dryRun,
      candidates,
      repacked,
      cleaned,
      skipped,
      left,
      bytesFreed: repacked.reduce((n, r) => n + Math.max(0, r.bytesBefore - r.bytesAfter), 0),
    };
  },
});

const NO_KEY =
  'no primary key and no NOT NULL unique index (valid, not partial, no expression): pg_repack cannot repack ' +
  'a table without one';

/**
 * pg_repack's connection and priority: governed, its sessions build without parallel workers and
 * its ANALYZE is paced as VACUUM's (PGOPTIONS), and it runs at childNice (core/gentle.ts).
 */
function gentleChild(ctx: JobContext): Pick<RunOptions, 'libpq' | 'nice'> {
  const libpq = ctx.libpqSettings();
  const g = ctx.governor.gentle;
  const options = pgOptions(repackSettings(g));
  return { libpq: options ? { ...libpq, env: { ...libpq.env, PGOPTIONS: options } } : libpq, nice: g?.childNice };
}

/** The table's file (pg_repack swaps the rebuilt table's file in). */
async function fileOf(ctx: JobContext, table: string): Promise<string> {
  const { rows } = await ctx.pool.query(`select pg_relation_filenode($1::regclass)::text as f`, [table]);
  return rows[0].f as string;
}

/** Drops what an interrupted pg_repack left on the table (trigger, log table, type); true if there was any. */
async function cleanLeftover(ctx: JobContext, table: string): Promise<'none' | 'busy' | 'cleaned'> {
  const { rows } = await ctx.pool.query<{ oid: number; running: number }>(
    `select c.oid, (select count(*)::int from pg_stat_activity where application_name = 'pg_repack'
                     and datname = current_database() and pid <> pg_backend_pid()) as running
       from pg_class c where c.oid = $1::regclass
        and exists (select 1 from pg_trigger t where t.tgrelid = c.oid and t.tgname = 'repack_trigger')`,
    [table],
  );
  const r = rows[0];
  if (!r) return 'none';
  if (r.running > 0) return 'busy';
  await ctx.pool.query('select repack.repack_drop($1, 4)', [r.oid]);
  await ctx.log(`${table}: removed what an interrupted pg_repack left (its trigger and log table)`);
  return 'cleaned';
}

/** "1.4.8" from `pg_repack --version` ("pg_repack 1.4.8"). */
async function repackClientVersion(): Promise<string> {
  try {
    const { stdout } = await runProcess(binPath('pg_repack'), ['--version']);
    const v = /pg_repack\s+(\S+)/.exec(stdout)?.[1];
    if (v) return v;
    throw new Error(`unexpected output: ${stdout.trim()}`);
  } catch (err) {
    throw new PermanentJobError(
      `pg_repack client not usable here (Debian postgresql-15-repack): ${(err as Error).message}`,
      'EXTENSION',
    );
  }
}

export default job;

/** What a repack-table run returns (its result in the run history and the API). */
export type RepackTableResult = JobResult<typeof job>;
