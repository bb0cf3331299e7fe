// GET /api/backups's body: per target, everything that can be restored and where it
// lies: dumps (local file, bucket object, or both), partition archives (their parent,
// the partitions and rows in each, their bounds), base backups or pgBackRest sets, and
// the recovery window they give with the WAL archive.
import fs from 'node:fs/promises';
import type { BackupCatalog } from '../backup/target-catalog.ts';
import { objectUrl } from '../backup/object-store.ts';
import type { PartitionArchiveListing } from '../backup/partition-catalog.ts';
import type { TargetConfig } from '../core/config.ts';

const present = (p: string) =>
  fs.stat(p).then(
    () => true,
    () => false,
  );

type Location = 'local' | 'bucket' | 'local+bucket';
const locationOf = (local: boolean, bucket: boolean): Location =>
  local && bucket ? 'local+bucket' : bucket ? 'bucket' : 'local';

/** The restorable things of one target, each with where it is; the caller adds the proofs and ages. */
export async function restorables(t: TargetConfig, catalog: BackupCatalog, archives: PartitionArchiveListing) {
  const { dumps } = catalog;
  return {
    dumps: await Promise.all(
      dumps.map(async ({ path, manifest: m, restoreCheck }) => {
        const local = await present(path);
        return {
          file: m.file,
          format: m.format,
          database: (m as { database?: string }).database ?? null,
          finishedAt: m.finishedAt,
          bytes: m.bytes,
          sha256: m.sha256,
          verified: m.verified,
          rowCountsRecorded: Boolean(m.rowCounts),
          restoreCheck: restoreCheck ?? null,
          location: locationOf(local, Boolean(m.object)),
          where: [...(local ? [path] : []), ...(m.object ? [objectUrl(m.object)] : [])],
          encrypted: Boolean(m.object?.encryption),
        };
      }),
    ),
    partitionArchives: archives.archives.map((a) => ({
      file: a.file,
      parent: a.manifest.parent,
      createdAt: a.manifest.createdAt,
      partitions: a.manifest.partitions.map((p) => ({
        partition: p.partition,
        rows: p.rows,
        from: p.from ?? null,
        to: p.to ?? null,
      })),
      rows: a.manifest.partitions.reduce((n, p) => n + p.rows, 0),
      bytes: a.manifest.bytes,
      sha256: a.manifest.sha256,
      location: a.location,
      where: [...(a.localPath ? [a.localPath] : []), ...(a.manifest.object ? [objectUrl(a.manifest.object)] : [])],
      encrypted: Boolean(a.manifest.object?.encryption),
    })),
    // The engine's own part (native: baseBackups and the WAL archive; pgbackrest: the stanza's sets as
    // `pgbackrest info` lists them, newest first), each saying where it lies; every key is in every answer.
    baseBackups: [],
    pgbackrest: null,
    archive: null,
    ...catalog.api,
    ...(t.backup.engine === 'pgbackrest' && catalog.api.pgbackrest
      ? { pgbackrest: { ...(catalog.api.pgbackrest as object), location: `pgBackRest stanza ${t.backup.stanza}` } }
      : {}),
    // Every engine's sets alike, newest first.
    sets: catalog.sets,
    recoveryWindow: catalog.recoveryWindow,
  };
}
