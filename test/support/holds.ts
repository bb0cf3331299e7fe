// Holding a pgmaint run at a chosen step, so that a test can kill it there: a client tool
// wrapped to wait before it starts or after it has succeeded, and a DDL statement of
// pgmaint's own sessions made to wait on the server.
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';

const REAL_BIN = '/usr/lib/postgresql/15/bin';

export interface HeldTool {
  /** A PG_BINDIR: the real tools, with `tool` wrapped. */
  bin: string;
  /** Touching `hold-before` or `hold-after` here holds the next call; it touches `reached` when it waits. */
  faults: string;
}

/** PostgreSQL's tools in `dir`, with `tool` (pg_dump, pg_restore) held while a flag file says so. */
export function holdableTool(dir: string, tool: string): HeldTool {
  const [bin, faults] = [path.join(dir, 'fault-bin'), path.join(dir, 'faults')];
  fs.mkdirSync(bin, { recursive: true });
  fs.mkdirSync(faults, { recursive: true });
  for (const other of fs.readdirSync(REAL_BIN))
    if (other !== tool) fs.symlinkSync(path.join(REAL_BIN, other), path.join(bin, other));
  fs.writeFileSync(
    path.join(bin, tool),
    `#!/bin/sh
if [ -f "${faults}/hold-before" ]; then touch "${faults}/reached"; sleep 600; fi
"${REAL_BIN}/${tool}" "$@" || exit $?
if [ -f "${faults}/hold-after" ]; then touch "${faults}/reached"; sleep 600; fi
`,
    { mode: 0o755 },
  );
  return { bin, faults };
}

/**
 * An event trigger `name` that makes a pgmaint session's `tag` statement ('DROP TABLE', 'ALTER
 * TABLE') wait while the table `<schema>.<name>` holds a true row.
 */
export async function holdDdl(admin: pg.Pool, schema: string, name: string, tag: string): Promise<void> {
  await admin.query(`create table ${schema}.${name} (on_ boolean not null);
    create function ${schema}.${name}() returns event_trigger language plpgsql as $$
    begin
      if current_setting('application_name') like 'pgmaint%' and exists (select 1 from ${schema}.${name} where on_) then
        perform pg_sleep(600); end if;
    end $$;
    create event trigger ${name} on ddl_command_start when tag in ('${tag}') execute function ${schema}.${name}()`);
}
