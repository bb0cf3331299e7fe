// Secrets never reach logs, job data or Bull Board: passwords inside URLs and
// bearer tokens are masked wherever a string may carry one (error messages, stderr).
const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^:/?#\s@]*:)([^@\s/]+)@/gi;
const KEY_VALUE_PASSWORD = /\b(password|passwd|pwd|token)=([^\s&;]+)/gi;
const BEARER = /\b(Bearer\s+)[A-Za-z0-9._~+/=-]+/g;

export function redact(text: string): string {
  return text.replace(URL_PASSWORD, '$1***@').replace(KEY_VALUE_PASSWORD, '$1=***').replace(BEARER, '$1***');
}

/** A URL fit for logs: no password, no query string (which may carry one). */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    u.search = '';
    return u.toString();
  } catch {
    return '(invalid url)';
  }
}
