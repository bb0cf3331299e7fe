// Running PostgreSQL server binaries on this machine: the dev stack, the tests and
// the PITR drill's scratch instance. PostgreSQL refuses to run as root, so when we
// are root the server (and the files it owns) belong to the `postgres` OS user.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { childEnv } from './proc.ts';

export type OsOwner = { uid: number; gid: number };

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** The OS user a server started by us runs as: `postgres` when we are root, else ourselves. */
export function postgresUser(): OsOwner | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { env: childEnv() }).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { env: childEnv() }).toString().trim());
  return { uid, gid };
}

export function chownTree(p: string, owner: OsOwner | undefined): void {
  if (!owner) return;
  fs.chownSync(p, owner.uid, owner.gid);
  if (fs.statSync(p).isDirectory()) for (const e of fs.readdirSync(p)) chownTree(path.join(p, e), owner);
}

/** Runs a server binary (initdb, pg_ctl) as `ids`, in the allow-listed environment; the error carries its output. */
export async function runAs(cmd: string, args: string[], ids: { uid?: number; gid?: number }): Promise<string> {
  const child = spawn(cmd, args, { ...ids, env: childEnv({}, ids), stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0)
    throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${code}): ${out.trim().slice(-2000)}`);
  return out;
}
