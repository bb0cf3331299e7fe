// Every job the runner knows. Adding a job: one file in jobs/, one line here (and its
// `needs` decide which worker entry point serves it: docs/architecture.md#adding-a-job).
import type { AnyJobDefinition } from '../src/runner/job-definition.ts';
import archiveCheck from './archive-check.ts';
import backup from './backup.ts';
import baseBackup from './base-backup.ts';
import createPartitions from './create-partitions.ts';
import dailySalesRollup from './daily-sales-rollup.ts';
import dropExpiredPartitions from './drop-expired-partitions.ts';
import indexMaintenance from './index-maintenance.ts';
import indexReport from './index-report.ts';
import integrityCheck from './integrity-check.ts';
import noop from './noop.ts';
import pitrDrill from './pitr-drill.ts';
import pruneBackups from './prune-backups.ts';
import queryStatsSnapshot from './query-stats-snapshot.ts';
import repackTable from './repack-table.ts';
import restoreCheck from './restore-check.ts';
import restoreCluster from './restore-cluster.ts';
import restoreDump from './restore-dump.ts';
import restorePartition from './restore-partition.ts';
import vacuumAnalyze from './vacuum-analyze.ts';
import warmCache from './warm-cache.ts';

export const jobs: AnyJobDefinition[] = [
  archiveCheck,
  backup,
  baseBackup,
  createPartitions,
  dailySalesRollup,
  dropExpiredPartitions,
  indexMaintenance,
  indexReport,
  integrityCheck,
  noop,
  pitrDrill,
  pruneBackups,
  queryStatsSnapshot,
  repackTable,
  restoreCheck,
  restoreCluster,
  restoreDump,
  restorePartition,
  vacuumAnalyze,
  warmCache,
] as AnyJobDefinition[];
