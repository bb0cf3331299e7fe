// The start of every bench that runs pgBackRest and data directories as PostgreSQL's owner.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { postgresUser } from '../src/core/local-postgres.ts';

export interface BenchWorkdir {
  /** A new directory under the system's temporary one, which the owner can enter. */
  dir: string;
  /** PostgreSQL's owner when running as root (its servers refuse root), else undefined. */
  owner: ReturnType<typeof postgresUser>;
  /** Spawn options running a process as that owner (none when not root). */
  asOwner: { uid?: number; gid?: number };
}

/** Exits 2 unless pgBackRest is installed; then makes the bench's directory `pgmaint-bench-<name>-…`. */
export function pgbackrestWorkdir(name: string): BenchWorkdir {
  if (spawnSync('pgbackrest', ['version']).status !== 0) {
    console.error('pgBackRest is not installed: apt-get install -y pgbackrest');
    process.exit(2);
  }
  const owner = postgresUser();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `pgmaint-bench-${name}-`));
  fs.chmodSync(dir, 0o755);
  return { dir, owner, asOwner: owner ? { uid: owner.uid, gid: owner.gid } : {} };
}
