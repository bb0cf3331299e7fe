// Every job the runner knows. Adding a job: one file in jobs/, one line here.
import type { AnyJobDefinition } from '../src/job-definition.ts';
import backup from './backup.ts';
import baseBackup from './base-backup.ts';
import createPartitions from './create-partitions.ts';
import dropExpiredPartitions from './drop-expired-partitions.ts';
import noop from './noop.ts';
import pitrDrill from './pitr-drill.ts';

export const jobs: AnyJobDefinition[] = [backup, baseBackup, createPartitions, dropExpiredPartitions, noop, pitrDrill] as AnyJobDefinition[];
