import { describe, expect, it } from 'vitest';
import { Auth } from '../../src/http/auth.ts';

describe('sessions', () => {
  const admin = 'admin-token-0123456789abcdef';
  const viewer = 'viewer-token-0123456789abcdef';

  it('a session lasts 12 hours, cannot be forged or promoted, and ends when a token rotates', () => {
    const auth = new Auth(admin, viewer);
    const t0 = Date.UTC(2026, 0, 1);
    const cookie = auth.issueSession('viewer', t0);
    expect(auth.roleForSession(cookie, t0 + 1000)).toBe('viewer');
    expect(auth.roleForSession(cookie, t0 + 12 * 3600_000 - 1)).toBe('viewer');
    expect(auth.roleForSession(cookie, t0 + 12 * 3600_000 + 1)).toBeUndefined();
    expect(auth.roleForSession(cookie.replace(/^viewer/, 'admin'), t0 + 1000)).toBeUndefined();
    const [role, , mac] = cookie.split('.');
    expect(auth.roleForSession(`${role}.${t0 + 10 * 365 * 86400_000}.${mac}`, t0)).toBeUndefined();
    expect(new Auth(admin, 'rotated-viewer-token-0123456789').roleForSession(cookie, t0 + 1000)).toBeUndefined();
    expect(auth.roleForSession('garbage', t0)).toBeUndefined();
  });

  it('the cookie is HttpOnly and SameSite=Strict, Secure only over TLS, and cleared by the same name', () => {
    const auth = new Auth(admin, viewer);
    expect(auth.cookieHeader('admin', false)).toMatch(
      /^pgmaint_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict; Max-Age=43200$/,
    );
    expect(auth.cookieHeader('admin', true)).toMatch(/; Secure$/);
    expect(auth.clearCookieHeader()).toBe('pgmaint_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0');
  });
});
