// Plain-text tables and human durations for the CLI (--json prints the API's shapes instead).

/** Columns padded to their widest cell; a cell longer than `max` is cut with "…". */
export function renderTable(headers: string[], rows: (string | number | null | undefined)[][], max = 60): string {
  const cell = (v: string | number | null | undefined) => {
    const text = v === null || v === undefined ? '-' : String(v).replace(/\s+/g, ' ');
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  };
  const cells = rows.map((r) => r.map(cell));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return `${[line(headers), ...cells.map(line)].join('\n')}\n`;
}

/** 45s, 12m, 3h 05m, 2d 4h: how long, to the precision a person reads. */
export function humanDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '-';
  const s = Math.round(Math.abs(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`;
}

/** "3h 05m ago" from an ISO time. */
export function ago(iso: string | Date | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  return `${humanDuration((now - new Date(iso).getTime()) / 1000)} ago`;
}

/** 512 B, 12.3 MB, 4.1 GB. */
export function humanBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '-';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let n = bytes;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}
