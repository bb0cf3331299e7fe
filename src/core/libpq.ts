// libpq settings for child processes (pg_dump, pg_restore, psql) on a target.
import type { TargetConfig } from './config.ts';

/** libpq environment for child processes (pg_dump, psql): the password travels in
 * PGPASSWORD, never on the command line where `ps` would show it. */
export function libpqEnv(target: Pick<TargetConfig, 'url'>, applicationName = 'pgmaint'): Record<string, string> {
  const u = new URL(target.url);
  const env: Record<string, string> = {
    PGHOST: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')) || 'localhost',
    PGPORT: u.port || '5432',
    PGDATABASE: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    PGAPPNAME: applicationName,
  };
  if (u.username) env.PGUSER = decodeURIComponent(u.username);
  if (u.password) env.PGPASSWORD = decodeURIComponent(u.password);
  // host=/socket/dir and sslmode=… in the query string are honoured like libpq does.
  const host = u.searchParams.get('host');
  if (host) env.PGHOST = host;
  const sslmode = u.searchParams.get('sslmode');
  if (sslmode) env.PGSSLMODE = sslmode;
  return env;
}
