// Literals that mean the same thing wherever they appear.

/** The target that DATABASE_URL names; every payload's default target. */
export const MAIN_TARGET = 'main';

/** The dairy's business day runs in this zone: daily rollups, partition bounds, schedules. */
export const BUSINESS_TIME_ZONE = 'Asia/Dhaka';

/** PostgreSQL's default WAL segment size, for an archive read before any base backup recorded the real one. */
export const DEFAULT_WAL_SEGMENT_BYTES = 16 * 1024 * 1024;
