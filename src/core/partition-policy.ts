// A partition policy as the config file states it (partitions: [...]): the schema
// both partition jobs and the monitor read, validated once at start.
import { IANAZone } from 'luxon';
import { z } from 'zod';
import { columnName, lockTimeoutSetting, qualifiedName } from './sql.ts';
import { MAIN_TARGET } from './constants.ts';

export const INTERVALS = ['hour', 'day', 'week', 'month', 'quarter', 'year'] as const;
export type PartitionInterval = (typeof INTERVALS)[number];

const RETENTION = /^(\d+)\s*(hours?|days?|weeks?|months?|years?)$/;

/** "24 months", "90 days": a number with a unit; a bare number is refused. */
export const retention = z
  .string()
  .regex(RETENTION, 'must be a number with a unit, e.g. "90 days" or "24 months" (a bare number is ambiguous)');

export function parseRetention(text: string): Record<string, number> {
  const m = RETENTION.exec(text.trim())!;
  const unit = `${m[2]!.replace(/s$/, '')}s`;
  return { [unit]: Number(m[1]) };
}

export const partitionPolicy = z
  .object({
    table: qualifiedName,
    column: columnName,
    interval: z.enum(INTERVALS),
    /** Periods ahead of now kept ready. */
    premake: z.number().int().min(1).max(1000).default(4),
    retention: retention.optional(),
    /** Dump a partition (verified) before dropping it. */
    archive: z.boolean().default(true),
    /** Boundaries at local period starts of this zone (for timestamptz columns). */
    timeZone: z
      .string()
      .refine((z) => IANAZone.isValidZone(z), 'must be an IANA time zone')
      .default('UTC'),
    target: z.string().default(MAIN_TARGET),
    /** Rows in the DEFAULT partition inside a range about to be created: move them, or fail. */
    defaultRows: z.enum(['move', 'fail']).default('move'),
    /** Most partitions dropped by one run. */
    maxDropsPerRun: z.number().int().min(1).default(10),
    lockTimeout: lockTimeoutSetting('5s'),
  })
  .strict();

export type PartitionPolicy = z.output<typeof partitionPolicy>;
