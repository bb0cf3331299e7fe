// chunked AES-256-GCM: unit tests moved from units.test.ts.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { decryptStream, encryptStream } from '../../src/backup/encryption.ts';
import { describe, expect, it } from 'vitest';

describe('chunked AES-256-GCM', () => {
  const k = { id: 'k1', key: randomBytes(32) };
  const roundTrip = async (
    data: Buffer,
    transform: (enc: Buffer) => Buffer = (b) => b,
    keys = (id: string) => (id === 'k1' ? k : undefined),
  ) => {
    const encParts: Buffer[] = [];
    for await (const c of Readable.from([data]).pipe(encryptStream(k))) encParts.push(c as Buffer);
    const enc = Buffer.concat(encParts);
    const out: Buffer[] = [];
    await pipeline(Readable.from([transform(enc)]), decryptStream(keys, 'obj'), async (src: AsyncIterable<Buffer>) => {
      for await (const c of src) out.push(c as Buffer);
    });
    return { enc, plain: Buffer.concat(out) };
  };

  it('round-trips several chunks and an empty input', async () => {
    const data = randomBytes(3.5 * 1024 * 1024);
    const { enc, plain } = await roundTrip(data);
    expect(plain.equals(data)).toBe(true);
    expect(enc.subarray(0, 8).toString()).toBe('PGMENC2\n');
    expect((await roundTrip(Buffer.alloc(0))).plain.length).toBe(0);
  });

  it('refuses a truncated, altered or extended object, and an unknown key, naming the object', async () => {
    const data = randomBytes(2.5 * 1024 * 1024);
    const chunkBytes = 12 + 4 + 1024 * 1024 + 16;
    const header = 8 + 1 + 2 + 16; // magic, key id length, key id, object id
    await expect(roundTrip(data, (e) => e.subarray(0, header + 2 * chunkBytes))).rejects.toThrow(
      /obj: cannot decrypt: the object is truncated/,
    );
    await expect(
      roundTrip(data, (e) => {
        const c = Buffer.from(e);
        c[header + 100]! ^= 1;
        return c;
      }),
    ).rejects.toThrow(/chunk 0 fails authentication/);
    await expect(roundTrip(data, (e) => Buffer.concat([e, e.subarray(header, header + chunkBytes)]))).rejects.toThrow(
      /data follows the last chunk/,
    );
    await expect(
      roundTrip(
        data,
        (e) => e,
        () => undefined,
      ),
    ).rejects.toThrow(/encrypted with key "k1", which is not configured/);
  });
});
