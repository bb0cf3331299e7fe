// Schedules as data: synced into BullMQ job schedulers on start (ids are stable;
// removing an entry here removes its scheduler from Redis). Times are read in `tz`.
// The config file can switch one off with scheduler.disabled: [id].
import type { Schedule } from '../src/schedules.ts';

export const schedules: Schedule[] = [
  {
    id: 'backup-main-nightly',
    job: 'backup',
    cron: '0 2 * * *',
    tz: 'Asia/Dhaka',
    payload: { target: 'main' },
    catchUp: 'latest',
    overlap: 'skip',
  },
  {
    // Hourly, so a runway that ran short (or an outage) is repaired within the hour.
    id: 'partitions-main-hourly',
    job: 'create-partitions',
    cron: '7 * * * *',
    tz: 'Asia/Dhaka',
    payload: { target: 'main' },
    catchUp: 'latest',
    overlap: 'skip',
  },
  {
    // Retention after the nightly backup; a failed archive keeps the partition.
    id: 'retention-main-daily',
    job: 'drop-expired-partitions',
    cron: '30 3 * * *',
    tz: 'Asia/Dhaka',
    payload: { target: 'main' },
    catchUp: 'latest',
    overlap: 'skip',
  },
];
