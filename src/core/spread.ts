// Spreading a fleet's runs over a window. A schedule with `spread: 45m` runs each
// target at its cron time plus an offset in [0, 45m) derived from the target's name
// (sha256, so every process, on every start, gives a name the same offset): a target's
// time does not move from night to night, and 1,000 targets do not start in one minute.
// The offset depends on the target only, so one target's runs keep their order (its
// index maintenance still follows its vacuum by the cron's 15 minutes).
import { createHash } from 'node:crypto';
import { z } from 'zod';

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000 } as const;
const WEEK_MS = 7 * 86_400_000;

/** "45m", "90s", "2h", "1h30m"; "0m" means no spread. */
export const DURATION = /^(?:(\d{1,4})h)?(?:(\d{1,5})m)?(?:(\d{1,6})s)?$/;

export function parseDuration(text: string): number {
  const m = DURATION.exec(text);
  if (!m || !text) throw new Error(`"${text}" is not a duration such as 45m, 90s, 2h or 1h30m`);
  return Number(m[1] ?? 0) * UNIT_MS.h + Number(m[2] ?? 0) * UNIT_MS.m + Number(m[3] ?? 0) * UNIT_MS.s;
}

/** A duration in the config file: a string such as 45m, at most a week. */
export const durationField = z
  .string()
  .refine((v) => v !== '' && DURATION.test(v), 'must be a duration such as 45m, 90s, 2h or 1h30m')
  .refine((v) => !DURATION.test(v) || parseDuration(v) <= WEEK_MS, 'must be at most a week (168h)');

/** "1h02m05s", "12m", "0s": a duration as the schedules table shows it. */
export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const parts = [h ? `${h}h` : '', m ? `${m}m` : '', sec ? `${sec}s` : ''].filter(Boolean);
  return parts.join('') || '0s';
}

/**
 * The offset of `name` inside a window of `spreadMs`: whole seconds in [0, spreadMs),
 * the same in every process and on every start (the first 48 bits of sha256, not a
 * random number or a per-process hash seed).
 */
export function spreadOffsetMs(name: string, spreadMs: number): number {
  const seconds = Math.floor(spreadMs / 1000);
  if (seconds <= 0) return 0;
  const h = createHash('sha256').update(name).digest().readUIntBE(0, 6);
  return Math.floor((h / 2 ** 48) * seconds) * 1000;
}
