// One partition out of a verified partition archive, into the database under its own
// name, as a plain table, in one transaction: zstd decompresses (checking its own
// checksum), pg_restore --single-transaction creates the table and loads its rows. Killed
// or failed, the transaction leaves nothing; finished, the whole table is there.
import { binPath, runPipeline, runProcess } from '../core/proc.ts';
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
  // Version 1 archives (.dump) were not compressed by zstd.
  if (!file.endsWith('.zst')) {
    await runProcess(binPath('pg_restore'), [...args, file], { libpq: ctx.libpqSettings(), signal: ctx.signal });
    return;
  }
  await runPipeline(
    [
      { cmd: 'zstd', args: ['-q', '-d', '-c', file] },
      { cmd: binPath('pg_restore'), args, libpq: ctx.libpqSettings() },
    ],
    { signal: ctx.signal },
  );
}
