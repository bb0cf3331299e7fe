// Demo secrets: random tokens, and an env.sh other shells can source.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

/** A random token for demo and tests: 32 url-safe characters. */
export function newToken(): string {
  return randomBytes(24).toString('base64url');
}

export function writeEnvFile(file: string, env: Record<string, string>): void {
  fs.writeFileSync(
    file,
    `${Object.entries(env)
      .map(([k, v]) => `export ${k}='${v}'`)
      .join('\n')}\n`,
    { mode: 0o600 },
  );
}
