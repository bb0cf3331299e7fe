// Bearer tokens for the API, and a signed HttpOnly cookie for browsers (Bull Board),
// set by the login page. ADMIN_TOKEN may write; VIEWER_TOKEN may only read.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

export type Role = 'admin' | 'viewer';

export const SESSION_COOKIE = 'pgmaint_session';
const SESSION_TTL_MS = 12 * 3600_000;

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Constant-time comparison: both sides hashed to equal length first. */
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** The token of an `Authorization: Bearer …` header, if there is one. */
export function bearerToken(authorization: string | undefined): string | undefined {
  return /^Bearer\s+(.+)$/i.exec(authorization ?? '')?.[1]?.trim() || undefined;
}

export class Auth {
  private readonly key: Buffer;

  constructor(
    private readonly adminToken: string | undefined,
    private readonly viewerToken: string | undefined,
    readonly insecureNoAuth = false,
  ) {
    // Sessions are signed with a key derived from the tokens: rotating a token ends them.
    this.key = digest(`pgmaint-session:${adminToken ?? ''}:${viewerToken ?? ''}`);
  }

  roleForToken(token: string | undefined): Role | undefined {
    if (!token) return undefined;
    // Both comparisons always run, so timing does not tell which token was close.
    const admin = this.adminToken ? safeEqual(token, this.adminToken) : false;
    const viewer = this.viewerToken ? safeEqual(token, this.viewerToken) : false;
    return admin ? 'admin' : viewer ? 'viewer' : undefined;
  }

  issueSession(role: Role, now = Date.now()): string {
    const body = `${role}.${now + SESSION_TTL_MS}`;
    return `${body}.${createHmac('sha256', this.key).update(body).digest('base64url')}`;
  }

  roleForSession(value: string | undefined, now = Date.now()): Role | undefined {
    if (!value) return undefined;
    const [role, expires, mac] = value.split('.');
    if (!role || !expires || !mac || (role !== 'admin' && role !== 'viewer')) return undefined;
    const expected = createHmac('sha256', this.key).update(`${role}.${expires}`).digest('base64url');
    if (!safeEqual(mac, expected) || Number(expires) < now) return undefined;
    return role;
  }

  /** Role from `Authorization: Bearer …` or the session cookie; undefined when neither is valid. */
  authenticate(headers: { authorization?: string; cookie?: string }): Role | undefined {
    if (this.insecureNoAuth) return 'admin';
    const bearer = bearerToken(headers.authorization);
    if (bearer) return this.roleForToken(bearer);
    const cookie = (headers.cookie ?? '')
      .split(';')
      .map((c) => c.trim().split('='))
      .find(([k]) => k === SESSION_COOKIE)?.[1];
    return this.roleForSession(cookie ? decodeURIComponent(cookie) : undefined);
  }

  /** Set-Cookie for a new session; Secure when the request came over TLS. */
  cookieHeader(role: Role, secure: boolean): string {
    const value = encodeURIComponent(this.issueSession(role));
    return (
      `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; ` +
      `Max-Age=${SESSION_TTL_MS / 1000}${secure ? '; Secure' : ''}`
    );
  }

  /** Set-Cookie that ends the session. */
  clearCookieHeader(): string {
    return `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`;
  }
}
