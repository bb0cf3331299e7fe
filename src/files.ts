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
  await fs.writeFile(tmp, JSON.stringify(data, null, 2) + '\n');
  await publish(tmp, file);
}

/** UTC stamp for file names: 20261123T101500123Z. */
export function fileStamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, '').replace('.', '');
}
