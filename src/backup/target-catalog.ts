// What one target's backups are, the one reading the API and the monitor share: its
// logical dumps (BACKUP_DIR, and the bucket when one is configured) and what its
// backup engine lists (sets, the recovery window).
import type { ListedDump } from './catalog.ts';
import type { EngineCatalog, EngineName, EngineTarget } from './engine.ts';
import { engineFor } from './engines/index.ts';
import type { ObjectStore } from './object-store.ts';
import { listDumps } from './catalog.ts';

export interface BackupCatalog extends EngineCatalog {
  engine: EngineName;
  dumps: ListedDump[];
}

export async function readBackupCatalog(
  backupDir: string,
  target: EngineTarget,
  now = Date.now(),
  store?: ObjectStore,
): Promise<BackupCatalog> {
  const engine = engineFor(target);
  const [dumpListing, physical] = await Promise.all([
    listDumps(backupDir, target.name, store),
    engine.catalog(backupDir, now),
  ]);
  return {
    engine: engine.name,
    dumps: dumpListing.dumps,
    ...physical,
    refused: [...dumpListing.refused, ...physical.refused],
  };
}
