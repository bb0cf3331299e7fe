// File helpers for anything that counts as a backup: streamed checksums and
// publication by rename after fsync, so a crash never leaves a half-written
// file under a final name.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

export async function sha256File(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20, signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A directory's checksum: sha256 of its files' "sha256  name" lines, names sorted. */
export async function sha256Tree(
  dir: string,
  signal?: AbortSignal,
): Promise<{ sha256: string; bytes: number; files: number }> {
  const names = (await fs.readdir(dir)).sort();
  const lines: string[] = [];
  let bytes = 0;
  for (const n of names) {
    const full = path.join(dir, n);
    bytes += (await fs.stat(full)).size;
    lines.push(`${await sha256File(full, signal)}  ${n}\n`);
  }
  return { sha256: createHash('sha256').update(lines.join('')).digest('hex'), bytes, files: names.length };
}

export async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Renames into place and makes the rename durable. */
export async function publish(tmp: string, final: string): Promise<void> {
  await fsyncPath(tmp);
  await fs.rename(tmp, final);
  await fsyncPath(path.dirname(final));
}

export async function writeJsonAtomic(file: string, data: unknown): Promise<void> {
  const tmp = `${file}.partial`;
  await fs.writeFile(tmp, `${JSON.stringify(data, null, 2)}\n`);
  await publish(tmp, file);
}

/** UTC stamp for file names: 20261123T101500123Z. */
export function fileStamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, '').replace('.', '');
}

/** Bytes of a file, or of every file under a directory; 0 when it is gone. */
export async function treeSize(p: string): Promise<number> {
  const st = await fs.stat(p).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const e of await fs.readdir(p)) total += await treeSize(path.join(p, e));
  return total;
}
