// "Did you mean …?" for a misspelt name (a payload key, a job): the one known name
// nearest to what was typed, when one is near enough to be a likely typo.

/** `; did you mean "backup"?` when one known name is near `typed`, else ''. */
export function didYouMean(typed: string, known: readonly string[]): string {
  const near = nearestName(typed, known);
  return near === undefined ? '' : `; did you mean ${JSON.stringify(near)}?`;
}

/**
 * The known name that differs from `typed` only in letter case, else the one within a small
 * edit distance (1 for short names, 2 from five letters on; a swap of neighbours counts as
 * one edit), else the only one that `typed` begins (`vacuum` → `vacuum-analyze`). Ties go to
 * the first in `known`.
 */
export function nearestName(typed: string, known: readonly string[]): string | undefined {
  const t = typed.toLowerCase();
  if (!t) return undefined;
  const exact = known.find((k) => k.toLowerCase() === t);
  if (exact !== undefined) return exact;
  const limit = t.length >= 5 ? 2 : t.length >= 3 ? 1 : 0;
  let best: { name: string; distance: number } | undefined;
  for (const k of known) {
    const d = editDistance(t, k.toLowerCase());
    if (d <= limit && (!best || d < best.distance)) best = { name: k, distance: d };
  }
  if (best) return best.name;
  const extended = t.length >= 4 ? known.filter((k) => k.toLowerCase().startsWith(t)) : [];
  return extended.length === 1 ? extended[0] : undefined;
}

/** Optimal string alignment distance: insertions, deletions, substitutions, neighbour swaps. */
function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}
