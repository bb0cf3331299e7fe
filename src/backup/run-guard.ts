// What every job that writes into BACKUP_DIR does first: make sure its directory
// is writable (a clear, permanent error otherwise), and run alone per target —
// across workers and between a schedule and an ad-hoc run — under a session
// advisory lock on the target, which goes with the session if the worker dies.
import fs from 'node:fs/promises';
import { PermanentJobError } from '../core/errors.ts';
import type { JobContext } from '../runner/job-definition.ts';

export async function ensureWritableDir(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { recursive: true });
    await fs.access(dir, fs.constants.W_OK);
  } catch (err) {
    throw new PermanentJobError(`BACKUP_DIR: ${dir} is not writable: ${(err as Error).message}`, 'BACKUP_DIR');
  }
}

/** Runs `fn` holding the lock `key`; when another run holds it, logs and returns a skip. */
export async function runAlone<T>(
  ctx: JobContext,
  key: string,
  what: string,
  fn: () => Promise<T>,
): Promise<T | { skipped: string }> {
  return ctx.withClient(
    async (client) => {
      const { rows } = await client.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1)) as ok', [key]);
      if (!rows[0]!.ok) {
        const skipped = `another ${what} of this target is running`;
        await ctx.log(`${skipped}; this run is skipped`);
        return { skipped };
      }
      return await fn();
    },
    { reset: { text: 'select pg_advisory_unlock(hashtext($1))', values: [key] } },
  );
}
