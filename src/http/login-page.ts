// The sign-in page for browsers: a token typed once becomes a session cookie.
export function loginPage(error?: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgmaint — sign in</title>
<style>body{font:16px system-ui,sans-serif;display:grid;place-items:center;height:100vh;margin:0;background:#f4f5f7}
form{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:20rem}
input{width:100%;padding:.5rem;margin:.5rem 0 1rem;box-sizing:border-box}button{padding:.5rem 1.5rem}
.err{color:#b00020}</style></head>
<body><form method="post" action="/login">
<h1>pgmaint</h1>
${error ? `<p class="err" role="alert">${error}</p>` : ''}
<label for="token">Access token (admin or viewer)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form></body></html>`;
}
