// The names backups go by: dump files, base backup labels, pgBackRest set labels and
// partition archive files. One validator each, shared by the API (a payload that names
// a backup) and by the catalog, which takes nothing read from a manifest, a bucket or
// `pgbackrest info` as a name until it passes the same check.
import { z } from 'zod';

/** <target>-<UTC stamp>.dump (custom format) or .dumpdir (directory format); never a path. */
export const dumpFileName = z
  .string()
  .regex(
    /^[a-z0-9_-]+-\d{8}T\d{9}Z\.(dump|dumpdir)$/,
    'must be a dump file name such as main-20261125T020000000Z.dump',
  );

/** <target>-<UTC stamp>: a native base backup's directory under BACKUP_DIR/base/<target>/. */
export const baseBackupLabel = z
  .string()
  .regex(/^[a-z0-9_-]+-\d{8}T\d{9}Z$/, 'must be a base backup label such as main-20261125T010000000Z');

/** A pgBackRest set: full 20261125-010000F, or diff/incr 20261125-010000F_20261126-010000D. */
export const pgbackrestSetLabel = z
  .string()
  .regex(/^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$/, 'must be a pgBackRest set label such as 20261125-010000F');

/** A WAL segment file name (timeline, then the segment number in two halves). */
export const walSegmentName = z.string().regex(/^[0-9A-F]{24}$/, 'must be a WAL segment name');

/**
 * <schema>.<parent>-<UTC stamp>.dump.zst (version 1 archives: .dump), the name
 * drop-expired-partitions gives an archive under BACKUP_DIR/partitions/<target>/.
 */
export const partitionArchiveName = z
  .string()
  .regex(
    /^[A-Za-z_][A-Za-z0-9_$]{0,62}\.[A-Za-z_][A-Za-z0-9_$]{0,62}-\d{8}T\d{9}Z\.dump(\.zst)?$/,
    'must be a partition archive name such as sales.sale_order-20261125T020000000Z.dump.zst',
  );
