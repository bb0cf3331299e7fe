// Which PostgreSQL cluster a target lives on: the host and port of its URL. Targets
// that are databases of one cluster share its CPU, disks and connection limit, so
// heavy jobs are limited per cluster, not per target.
//
// The host is taken as written, lower-cased, and never resolved: `localhost` and
// `127.0.0.1` (or two DNS names of one machine) count as two clusters. The port is
// 5432 when the URL gives none; a Unix socket directory (`?host=/run/postgresql`)
// counts as the host, and no host at all as "(local socket)".

/** "db1.example.com:5432", "[::1]:5433", "/run/postgresql:5432". */
export function clusterOf(url: string): string {
  const u = new URL(url);
  const socket = u.searchParams.get('host');
  const host = (socket || decodeURIComponent(u.hostname) || '(local socket)').toLowerCase();
  const port = u.searchParams.get('port') || u.port || '5432';
  return `${host}:${port}`;
}
