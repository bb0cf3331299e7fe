// What the remote mode makes of what came back from PGMAINT_URL: pgmaint's JSON (its answer, or
// its refusal by status), or something else at that address (a web page, a redirect, a proxy's
// error page, a plain-HTTP port, a certificate for another name), each said as what it is and
// what to set instead. Nothing the server sent reaches the terminal unescaped (terminal.ts).
import type http from 'node:http';
import { ConfigError, ServiceUnavailableError } from '../core/errors.ts';
import { answerError } from './client.ts';

// TLS verification failures: a missing CA is a setting to fix, not a server to wait for.
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS/;

/** OpenSSL's words for a TLS handshake answered in plain text. */
const NOT_TLS = /wrong version number|packet length too long|http request|unknown protocol/i;

/** The answer's JSON body, or the error for a status or a body that is not pgmaint's. */
export function serverAnswer(
  server: string,
  action: string,
  asked: URL,
  res: Pick<http.IncomingMessage, 'statusCode' | 'headers'>,
  raw: Buffer,
): unknown {
  const status = res.statusCode ?? 0;
  const contentType = res.headers['content-type'];
  let body: unknown;
  if (/^application\/json\b/.test(contentType ?? '')) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      body = undefined;
    }
  }
  const what = `${server} answered ${status} with ${contentType ?? 'no content type'}`;
  if (status >= 300 && status < 400) throw redirected(server, status, asked, res.headers.location);
  const base = basePath(asked);
  // pgmaint's own 404 for a path it has no route for, under a PGMAINT_URL with a path: most often
  // the path is the mistake (…/api, or the board's …/admin/queues copied from the banner).
  if (status === 404 && base && (body as { error?: unknown } | undefined)?.error === 'not found')
    throw new ConfigError(
      `${server} has no route for ${action} (404 for ${asked.pathname}): PGMAINT_URL is the address the API's ` +
        `/api/… paths go under; for a server at the root, set PGMAINT_URL to ${asked.origin}`,
    );
  if (status >= 200 && status < 300) {
    if (body === undefined) throw new ConfigError(`${what}, not pgmaint's JSON: is it the pgmaint server?`);
    return body;
  }
  // pgmaint refuses with a JSON object that says why; a web page or a proxy's error page does not.
  const refusal = typeof body === 'object' && body !== null && typeof (body as { error?: unknown }).error === 'string';
  if (!refusal) {
    if (status === 502 || status === 503 || status === 504)
      throw new ServiceUnavailableError(
        `${what}, not pgmaint's JSON: a proxy in front of the pgmaint server could not reach it? try again`,
      );
    throw new ConfigError(`${what}, not pgmaint's JSON: is it the pgmaint server?`);
  }
  throw answerError(status, body, server, action);
}

/** The path PGMAINT_URL adds before the route (`/pgmaint` of /pgmaint/api/jobs); '' for a server at the root. */
function basePath(asked: URL): string {
  return asked.pathname.slice(0, Math.max(0, asked.pathname.lastIndexOf('/api/')));
}

/** A redirect: pgmaint's API never sends one, so PGMAINT_URL is not its address; where it points may be. */
function redirected(server: string, status: number, asked: URL, location: string | undefined): Error {
  if (!location)
    return new ConfigError(`${server} answered ${status} (a redirect, to nowhere): is it the pgmaint server?`);
  let to: URL;
  try {
    to = new URL(location, asked);
  } catch {
    return new ConfigError(`${server} answered ${status}, redirecting to "${location}", not a URL`);
  }
  const route = asked.pathname.slice(basePath(asked).length);
  const shown = `${to.origin}${to.pathname}`;
  // The same route somewhere else (http:// to https://, another host or path): that somewhere is the server.
  if (to.pathname.endsWith(route)) {
    const there = `${to.origin}${to.pathname.slice(0, -route.length).replace(/\/+$/, '')}`;
    return new ConfigError(`${server} answered ${status}, redirecting to ${shown}: set PGMAINT_URL to ${there}`);
  }
  return new ConfigError(
    `${server} answered ${status}, redirecting to ${shown}, which is not pgmaint's API: set PGMAINT_URL to the ` +
      "pgmaint server's address",
  );
}

/** Why a request got no answer: exit 3 (try again), or exit 2 for a setting to fix (TLS). */
export function unreachable(
  server: string,
  err: Error,
  timedOutAfterMs: number | false,
  pgmaintTimeoutMs: number,
): Error {
  if (timedOutAfterMs !== false)
    return new ServiceUnavailableError(
      `${server}: no answer within ${Math.ceil(timedOutAfterMs / 1000)}s` +
        (timedOutAfterMs === pgmaintTimeoutMs ? ' (PGMAINT_TIMEOUT)' : ''),
    );
  const e = err as NodeJS.ErrnoException & { reason?: string; host?: string; cert?: { subjectaltname?: string } };
  const code = String(e.code ?? '');
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const names = e.cert?.subjectaltname ?? 'no subject alternative names';
    return new ConfigError(
      `${server}: its TLS certificate is for ${names}, not ${e.host ?? 'this host'} (the certificate is trusted, ` +
        'the name does not match); set PGMAINT_URL to a name the certificate holds',
    );
  }
  // Node 24 appends its own hint (`; if the root CA is installed locally, try … --use-system-ca`);
  // ours names the setting that does it here.
  if (TLS_CODES.test(code))
    return new ConfigError(
      `${server}: its TLS certificate is not trusted here (${err.message.split(';')[0]}); PGMAINT_CA_FILE ` +
        'names the CA that signed it',
    );
  if (NOT_TLS.test(err.message))
    return new ConfigError(
      `${server}: does not speak TLS on that port (it answered in plain text); for a plain HTTP server, set ` +
        `PGMAINT_URL to ${server.replace(/^PGMAINT_URL https:/, 'http:')}`,
    );
  if (code === 'EPROTO') {
    // OpenSSL's "…:error:0A000410:SSL routines:func:reason:file:line:": the reason is what a person can read.
    const reason = /error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)/.exec(err.message)?.[1] ?? 'protocol error';
    return new ConfigError(`${server}: the TLS handshake failed (${reason})`);
  }
  return new ServiceUnavailableError(`${server}: cannot reach it: ${err.message}`);
}
