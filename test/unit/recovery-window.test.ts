import { describe, expect, it } from 'vitest';
import { type ListedBaseBackup, recoveryWindow } from '../../src/backup/catalog.ts';
import { type ArchiveListing, parseSegmentName, segmentName } from '../../src/backup/wal.ts';

describe('recovery window', () => {
  const SEG = 16 * 1024 * 1024;
  const at = (iso: string) => new Date(iso);
  const archive = (segnos: number[], newestAt: string): ArchiveListing => ({
    dir: '/archive',
    segments: segnos.map((n, i) => ({
      name: segmentName(1, BigInt(n), SEG),
      timeline: 1,
      segno: BigInt(n),
      mtime: i === segnos.length - 1 ? at(newestAt) : at('2026-01-01T00:00:00Z'),
    })),
    files: [],
    historyFiles: [],
  });
  const base = (label: string, startSeg: number, stoppedAt: string): ListedBaseBackup =>
    ({
      path: `/base/${label}`,
      manifest: { label, startWal: segmentName(1, BigInt(startSeg), SEG), walSegmentSize: SEG, timeline: 1, stoppedAt },
    }) as unknown as ListedBaseBackup;

  it('runs from the oldest base backup with an unbroken chain to the newest archived segment', () => {
    const bases = [base('new', 8, '2026-01-03T00:00:00Z'), base('old', 2, '2026-01-01T06:00:00Z')];
    const w = recoveryWindow(bases, archive([2, 3, 4, 5, 6, 7, 8, 9], '2026-01-04T06:00:00Z'));
    expect(w).toEqual({
      earliest: '2026-01-01T06:00:00Z',
      latest: '2026-01-04T06:00:00.000Z',
      seconds: 3 * 86400,
      fromBaseBackup: 'old',
      brokenChains: [],
    });
    expect(parseSegmentName(segmentName(1, 0x1ffn, SEG), SEG)).toEqual({ timeline: 1, segno: 0x1ffn });
  });

  it('a gap breaks the older chain and names the missing segment; no archive, no window', () => {
    const bases = [base('new', 8, '2026-01-03T00:00:00Z'), base('old', 2, '2026-01-01T06:00:00Z')];
    const w = recoveryWindow(bases, archive([2, 3, 5, 6, 7, 8, 9], '2026-01-04T00:00:00Z'));
    expect(w.fromBaseBackup).toBe('new');
    expect(w.seconds).toBe(86400);
    expect(w.brokenChains).toEqual([{ label: 'old', missing: segmentName(1, 4n, SEG) }]);
    expect(recoveryWindow(bases, undefined)).toMatchObject({ earliest: null, seconds: 0, fromBaseBackup: null });
  });
});
