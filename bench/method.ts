// The benchmarks' method: each side runs `rounds` times, interleaved (A, B, A, B …),
// both timed from outside the same way; a row shows the median and min–max of each
// side and the ratio of medians. The load average is printed before and after, so a
// noisy run can be recognised; compare ratios within one run only.
import os from 'node:os';

export interface Side {
  name: string;
  /** Runs once and returns milliseconds (timed by the caller, from outside). */
  run(round: number): Promise<number>;
}

export interface Sample {
  name: string;
  ms: number[];
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Times an async function from outside, in milliseconds. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/**
 * Runs the sides interleaved for `rounds` rounds. `warmup` rounds go first, in the same
 * order, and are not counted: a long-lived process's steady state, not its first call
 * (cold JIT and caches), on every side alike. `alternate`: every other round runs the
 * sides in reverse order (A, B, B, A …), so that work which grows with each run (a
 * repository that gains a set per run) does not always fall on the same side.
 */
export async function interleave(
  sides: Side[],
  rounds: number,
  { warmup = 0, alternate = false } = {},
): Promise<Sample[]> {
  const samples = sides.map((s) => ({ name: s.name, ms: [] as number[] }));
  for (let r = 0; r < warmup; r++)
    for (const side of sides) console.error(`  warm-up: ${side.name} ${(await side.run(-1 - r)).toFixed(1)} ms`);
  for (let r = 0; r < rounds; r++) {
    const order = [...sides.entries()];
    if (alternate && r % 2 === 1) order.reverse();
    for (const [i, side] of order) {
      const ms = await side.run(r);
      samples[i]!.ms.push(ms);
      console.error(
        `  round ${r + 1}: ${side.name} ${ms < 10_000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`}`,
      );
    }
  }
  return samples;
}

export const loadAverage = () =>
  os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

export type Unit = 's' | 'ms';
const inUnit = (ms: number, unit: Unit) => (unit === 's' ? (ms / 1000).toFixed(2) : ms.toFixed(ms < 10 ? 2 : 0));

/** "1.23 s (1.10–1.40)": the median with min–max. */
export function fmt(s: Sample, unit: Unit = 's'): string {
  const [lo, hi] = [Math.min(...s.ms), Math.max(...s.ms)];
  return `${inUnit(median(s.ms), unit)} ${unit} (${inUnit(lo, unit)}–${inUnit(hi, unit)})`;
}

/** One table row: ours against theirs, medians with min–max, and ours/theirs. */
export function row(what: string, ours: Sample, theirs: Sample, target?: string, unit: Unit = 's'): string[] {
  const ratio = median(ours.ms) / median(theirs.ms);
  return [what, fmt(ours, unit), fmt(theirs, unit), `${ratio.toFixed(2)}×`, target ?? ''];
}

/**
 * The verdict on a row: "level" when the two sides' min–max ranges overlap (the ratio is
 * inside the run-to-run spread, so the run cannot tell them apart), else "met" or "not
 * met" against a target such as "≤ 1.1×" (ours over theirs); without a target, "faster"
 * or "slower".
 */
export function verdict(ours: Sample, theirs: Sample, target?: string): string {
  const overlap = Math.min(...ours.ms) <= Math.max(...theirs.ms) && Math.min(...theirs.ms) <= Math.max(...ours.ms);
  if (overlap) return 'level';
  const ratio = median(ours.ms) / median(theirs.ms);
  const limit = target ? /≤\s*([\d.]+)/.exec(target) : null;
  if (!limit) return ratio < 1 ? 'faster' : 'slower';
  return ratio <= Number(limit[1]) ? 'met' : 'not met';
}

export function printTable(title: string, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(`\n${title}\n`);
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of rows) console.log(line(r));
}
