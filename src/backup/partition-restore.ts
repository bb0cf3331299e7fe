// One partition out of a verified partition archive, into the database under its own
// name, as a plain table, in one transaction: zstd decompresses (checking its own
// checksum), pg_restore --single-transaction creates the table and loads its rows. Killed
// or failed, the transaction leaves nothing; finished, the whole table is there. The pipe
// into pg_restore passes the run's pacer: while the run is held no byte reaches pg_restore,
// and the server's COPY waits in ClientRead.
import { binPath, runPipeline } from '../core/proc.ts';
import type { JobContext } from '../runner/job-definition.ts';
import { splitQualified } from './partition-archive.ts';

export async function restoreArchivedTable(ctx: JobContext, file: string, partition: string): Promise<void> {
  const [schema, name] = splitQualified(partition);
  const args = [
    '--single-transaction',
    '--exit-on-error',
    '--no-owner',
    '--no-privileges',
    '--no-password',
    `--schema=${schema}`,
    `--table=${name}`,
    `--dbname=${ctx.libpqSettings().env.PGDATABASE}`,
  ];
  // Version 1 archives (.dump) were not compressed by zstd: read as they are, through the same pipe.
  const read = file.endsWith('.zst') ? { cmd: 'zstd', args: ['-q', '-d', '-c', file] } : { cmd: 'cat', args: [file] };
  await runPipeline([read, { cmd: binPath('pg_restore'), args, libpq: ctx.libpqSettings() }], {
    signal: ctx.signal,
    relay: ctx.governor.pacer(`pg_restore of ${partition}`),
  });
}
