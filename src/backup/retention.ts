// The retention rules every engine's expiry and the dumps' pruning share
// (backups.dumps, backups.base): the newest keepLast stay; anything younger than
// maxAgeDays stays; with a recovery window to keep, the newest item older than the
// window stays too, since restoring to the window's start needs a backup taken before it.

const DAY_MS = 86_400_000;

/** Why a set stays that expiry would remove: a drill or restore holds it (its shared advisory lock). */
export const HELD_BY_DRILL = 'in use by a running PITR drill';

export interface RetentionPolicy {
  keepLast: number;
  maxAgeDays: number;
}

export interface Decision<T> {
  item: T;
  keep: boolean;
  reason: string;
}

/** The keep/remove decision for a list sorted newest first. */
export function planRetention<T>(
  items: T[],
  time: (t: T) => number,
  policy: RetentionPolicy,
  now: number,
  anchorWindow: boolean,
): Decision<T>[] {
  const cutoff = now - policy.maxAgeDays * DAY_MS;
  // The window is anchored once a kept item is older than its start.
  let anchored = false;
  return items.map((item, i) => {
    if (i < policy.keepLast) {
      if (time(item) < cutoff) anchored = true;
      return { item, keep: true, reason: `among the newest ${policy.keepLast}` };
    }
    if (time(item) >= cutoff) return { item, keep: true, reason: `younger than ${policy.maxAgeDays} days` };
    if (anchorWindow && !anchored) {
      anchored = true;
      return {
        item,
        keep: true,
        reason: `newest before the ${policy.maxAgeDays}-day window: needed to restore to its start`,
      };
    }
    return {
      item,
      keep: false,
      reason: `older than ${policy.maxAgeDays} days and beyond the newest ${policy.keepLast}`,
    };
  });
}
