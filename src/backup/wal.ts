// WAL positions and segment file names, and what a WAL archive directory holds.
// A segment name is TTTTTTTT XXXXXXXX YYYYYYYY (timeline, then the segment number
// split in two); with the default 16 MB segments YYYYYYYY runs 00000000…000000FF.
import fs from 'node:fs/promises';
import path from 'node:path';

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
/** Files of the archive that belong to a segment: the segment, `.partial`, `.backup` history. */
const SEGMENT_FILE = /^([0-9A-F]{24})(\.partial|\.[0-9A-F]{8}\.backup)?(\.gz|\.lz4|\.zst)?$/;
const HISTORY_FILE = /^[0-9A-F]{8}\.history$/;

/** "16MB" (current_setting('wal_segment_size')) → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*(kB|MB|GB)?$/.exec(text.trim());
  if (!m) throw new Error(`cannot read size "${text}"`);
  return Number(m[1]) * ({ kB: 1024, MB: 1048576, GB: 1073741824 }[m[2] ?? ''] ?? 1);
}

/** "16/B374D848" → bigint byte position. */
export function parseLsn(lsn: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m) throw new Error(`not an LSN: "${lsn}"`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function segmentNumber(lsn: bigint, segmentSize: number): bigint {
  return lsn / BigInt(segmentSize);
}

export function segmentName(timeline: number, segno: bigint, segmentSize: number): string {
  const perId = 0x1_0000_0000n / BigInt(segmentSize);
  const hex = (n: bigint | number) => n.toString(16).toUpperCase().padStart(8, '0');
  return `${hex(timeline)}${hex(segno / perId)}${hex(segno % perId)}`;
}

export function parseSegmentName(name: string, segmentSize: number): { timeline: number; segno: bigint } | undefined {
  const m = SEGMENT.exec(name);
  if (!m) return undefined;
  const perId = 0x1_0000_0000n / BigInt(segmentSize);
  return { timeline: parseInt(m[1]!, 16), segno: BigInt(`0x${m[2]}`) * perId + BigInt(`0x${m[3]}`) };
}

export interface ArchivedSegment {
  name: string;
  timeline: number;
  segno: bigint;
  mtime: Date;
}

export interface ArchiveListing {
  dir: string;
  /** Complete segments, by segment number then timeline. */
  segments: ArchivedSegment[];
  /** Every file of the archive with the segment it belongs to (for pruning). */
  files: { name: string; segment?: string }[];
  historyFiles: string[];
}

export async function listArchive(dir: string, segmentSize: number): Promise<ArchiveListing> {
  const names = await fs.readdir(dir);
  const segments: ArchivedSegment[] = [];
  const files: ArchiveListing['files'] = [];
  const historyFiles: string[] = [];
  for (const name of names) {
    if (HISTORY_FILE.test(name)) {
      historyFiles.push(name);
      continue;
    }
    const m = SEGMENT_FILE.exec(name);
    files.push({ name, segment: m?.[1] });
    if (!m || m[2]) continue; // .partial and .backup files are not complete segments
    const parsed = parseSegmentName(m[1]!, segmentSize)!;
    const st = await fs.stat(path.join(dir, name)).catch(() => undefined);
    if (st) segments.push({ name, ...parsed, mtime: st.mtime });
  }
  segments.sort((a, b) => (a.segno === b.segno ? a.timeline - b.timeline : a.segno < b.segno ? -1 : 1));
  return { dir, segments, files, historyFiles };
}

export function newestSegment(listing: ArchiveListing): ArchivedSegment | undefined {
  return listing.segments.at(-1);
}

/**
 * The first segment number missing between `from` and the newest archived segment
 * (any timeline at or above `timeline` counts: a promotion continues the numbering),
 * or undefined when the archive is contiguous.
 */
export function firstGap(listing: ArchiveListing, from: bigint, timeline: number): bigint | undefined {
  const have = new Set(listing.segments.filter((s) => s.timeline >= timeline).map((s) => s.segno));
  const newest = newestSegment(listing);
  if (!newest || newest.segno < from) return from;
  for (let n = from; n <= newest.segno; n++) if (!have.has(n)) return n;
  return undefined;
}

/** Waits until `segment` is in the archive directory; throws after `timeoutMs`. */
export async function waitForArchived(
  dir: string,
  segment: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<number> {
  const started = Date.now();
  for (;;) {
    signal?.throwIfAborted();
    if (
      await fs.stat(path.join(dir, segment)).then(
        () => true,
        () => false,
      )
    )
      return Date.now() - started;
    if (Date.now() - started > timeoutMs)
      throw new Error(`segment ${segment} not in the archive after ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
