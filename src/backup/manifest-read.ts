// Reading a manifest or restore-check verdict, locally or from the bucket, before any
// check: within a size cap (a manifest is a few kB; a huge one is refused, never loaded
// whole), and locally never through a symlink, which may lead anywhere outside
// BACKUP_DIR. What is refused here is refused by name, like a manifest that fails its checks.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import type { Refusal } from './manifest-checks.ts';

/** The most a manifest or restore-check verdict may weigh (local file or bucket object). */
export const MAX_CATALOG_OBJECT_BYTES = 1024 * 1024;

/** What was read: the text, or why it was not read. */
export type ObjectText = { text: string } | { refused: string };

/** The refusal of a manifest or verdict over MAX_CATALOG_OBJECT_BYTES (size: what is known of it). */
export const tooLarge = (size: string): ObjectText => {
  const cap = `${MAX_CATALOG_OBJECT_BYTES} bytes (1 MiB)`;
  return { refused: `${size}: larger than the ${cap} a manifest or verdict may have; not read` };
};

/**
 * A local manifest's or verdict's text, or undefined when there is none. Never read
 * through a symlink (what it leads to must not reach a refusal either), nor when it is
 * not a regular file or is larger than MAX_CATALOG_OBJECT_BYTES.
 */
export async function readLocal(file: string): Promise<ObjectText | undefined> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') return { refused: 'a symlink: a manifest or verdict is never read through one' };
    throw err;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) return { refused: 'not a regular file; not read' };
    if (st.size > MAX_CATALOG_OBJECT_BYTES) return tooLarge(`${st.size} bytes`);
    return { text: await handle.readFile('utf8') };
  } finally {
    await handle.close();
  }
}

/** The text read, or undefined (nothing there, or refused: then the refusal is recorded, by name). */
export function textOf(read: ObjectText | undefined, object: string, refused: Refusal[]): string | undefined {
  if (read && 'refused' in read) refused.push({ object, reason: read.refused });
  return read && 'text' in read ? read.text : undefined;
}
