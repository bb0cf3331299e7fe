// The encryption format and the manifests' MAC, on real node:crypto: a chunk spliced in
// from another object under the same key fails; objects of the old format (PGMENC1)
// still decrypt; a manifest's MAC catches an edited field, a key that is not configured
// and a wrong key, each named. (The same on a bucket: object-store.test.ts.)
import { createCipheriv, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { decryptStream, encryptStream } from '../../src/backup/encryption.ts';
import { Keyring } from '../../src/backup/keyring.ts';
import { canonicalJson, sealManifest, whyUnauthenticated } from '../../src/backup/manifest-mac.ts';
import type { EncryptionKey } from '../../src/core/key.ts';

const CHUNK = 1024 * 1024;
const k1: EncryptionKey = { id: 'k1', key: randomBytes(32) };
const byId = (id: string) => (id === 'k1' ? k1 : undefined);

async function encrypt(data: Buffer, k = k1): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of Readable.from([data]).pipe(encryptStream(k))) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function decrypt(enc: Buffer, keys = byId): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([enc]), decryptStream(keys, 's3://b/dumps/main/x.dump.enc'), async (src) => {
    for await (const c of src) out.push(c as Buffer);
  });
  return Buffer.concat(out);
}

/** The length of an object's header: magic, key id length, key id, and (PGMENC2) the object id. */
const headerOf = (enc: Buffer) => 8 + 1 + enc[8]! + (enc.subarray(0, 8).toString() === 'PGMENC2\n' ? 16 : 0);

/** Where each chunk starts and ends in an encrypted object ([nonce][length][ciphertext][tag] after the header). */
function chunks(enc: Buffer): [number, number][] {
  const out: [number, number][] = [];
  for (let at = headerOf(enc); at < enc.length; ) {
    const end = at + 12 + 4 + enc.readUInt32BE(at + 12) + 16;
    out.push([at, end]);
    at = end;
  }
  return out;
}

/** An object as pgmaint wrote it before objects were bound to an id: PGMENC1, written here by hand. */
function legacyObject(k: EncryptionKey, data: Buffer): Buffer {
  const id = Buffer.from(k.id);
  const parts = [Buffer.from('PGMENC1\n'), Buffer.from([id.length]), id];
  const n = Math.max(1, Math.ceil(data.length / CHUNK));
  for (let i = 0; i < n; i++) {
    const nonce = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', k.key, nonce);
    const aad = Buffer.alloc(9);
    aad.writeBigUInt64BE(BigInt(i));
    aad[8] = i === n - 1 ? 1 : 0;
    cipher.setAAD(aad);
    const body = Buffer.concat([cipher.update(data.subarray(i * CHUNK, (i + 1) * CHUNK)), cipher.final()]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(body.length);
    parts.push(nonce, length, body, cipher.getAuthTag());
  }
  return Buffer.concat(parts);
}

describe('objects bound to their id', () => {
  it('a chunk spliced in from another object, at the same index and under the same key, fails', async () => {
    const a = await encrypt(randomBytes(2.5 * CHUNK));
    const b = await encrypt(randomBytes(2.5 * CHUNK));
    const a1 = chunks(a)[1]!;
    const b1 = chunks(b)[1]!;
    const spliced = Buffer.concat([a.subarray(0, a1[0]), b.subarray(b1[0], b1[1]), a.subarray(a1[1])]);
    expect(spliced.length).toBe(a.length);
    await expect(decrypt(spliced)).rejects.toThrow(
      /s3:\/\/b\/dumps\/main\/x\.dump\.enc: cannot decrypt: chunk 1 fails authentication/,
    );
    // Another object's last chunk in place of this one's (the last-chunk flag alone would pass it).
    const aLast = chunks(a).at(-1)!;
    const bLast = chunks(b).at(-1)!;
    const tail = Buffer.concat([a.subarray(0, aLast[0]), b.subarray(bLast[0], bLast[1])]);
    await expect(decrypt(tail)).rejects.toThrow(/chunk 2 fails authentication/);
    // A whole object's chunks under another's header (its object id) fail at the first.
    const header = headerOf(a);
    await expect(decrypt(Buffer.concat([a.subarray(0, header), b.subarray(header)]))).rejects.toThrow(
      /chunk 0 fails authentication/,
    );
  });

  it('each object gets its own random id in the header, after the key id', async () => {
    const a = await encrypt(Buffer.from('same'));
    const b = await encrypt(Buffer.from('same'));
    expect(a.subarray(0, 11).toString()).toBe('PGMENC2\n\u0002k1');
    expect(headerOf(a)).toBe(8 + 1 + 2 + 16);
    expect(a.subarray(11, 27).equals(b.subarray(11, 27))).toBe(false);
    expect((await decrypt(a)).toString()).toBe('same');
  });

  it('an object written in the old format (PGMENC1) still decrypts; altered, it still fails', async () => {
    const data = randomBytes(2.5 * CHUNK);
    const old = legacyObject(k1, data);
    expect((await decrypt(old)).equals(data)).toBe(true);
    const altered = Buffer.from(old);
    altered[8 + 1 + 2 + 100]! ^= 1;
    await expect(decrypt(altered)).rejects.toThrow(/chunk 0 fails authentication/);
    await expect(decrypt(old.subarray(0, old.length - 100))).rejects.toThrow(/the object is truncated/);
  });

  it('a key id not configured fails naming the object and the id; a wrong key fails naming the object', async () => {
    const enc = await encrypt(randomBytes(1000));
    await expect(decrypt(enc, () => undefined)).rejects.toThrow(
      's3://b/dumps/main/x.dump.enc: cannot decrypt: it was encrypted with key "k1", which is not configured',
    );
    const wrong = { id: 'k1', key: randomBytes(32) };
    await expect(decrypt(enc, () => wrong)).rejects.toThrow(
      /^s3:\/\/b\/dumps\/main\/x\.dump\.enc: cannot decrypt: chunk 0 fails authentication \(wrong key/,
    );
  });
});

describe('manifest MAC', () => {
  const b64 = (k: EncryptionKey) => k.key.toString('base64');
  const k2: EncryptionKey = { id: 'k2', key: randomBytes(32) };
  const before = new Keyring('k1', { k1: b64(k1) });
  const rotated = new Keyring('k2', { k2: b64(k2), k1: b64(k1) });
  const manifest = {
    kind: 'pgmaint-dump',
    file: 'main-20261203T120000000Z.dump',
    sha256: 'a'.repeat(64),
    rowCounts: { 'app.herd': 2000, 'app.events': 50 },
    object: { bucket: 'b', key: 'pgmaint/dumps/main/main-20261203T120000000Z.dump.enc', encryption: null },
  };
  /** As read back: the JSON text a file or object holds, parsed. */
  const reread = (m: object) => JSON.parse(JSON.stringify(m, null, 2)) as Record<string, any>;

  it('one serialization for one value, whatever the order of its keys', () => {
    expect(canonicalJson({ b: [1, { d: 'x', c: null }], a: 'é' })).toBe('{"a":"é","b":[1,{"c":null,"d":"x"}]}');
    expect(canonicalJson({ a: 1, b: 2 })).toBe(canonicalJson({ b: 2, a: 1 }));
  });

  it('verifies as written and re-read, also with its keys reordered; an edited row count fails', () => {
    const sealed = reread(sealManifest(manifest, before));
    expect(sealed.mac).toMatchObject({ algorithm: 'hmac-sha256', keyId: 'k1' });
    expect(whyUnauthenticated(sealed, before)).toBeUndefined();
    const reordered = Object.fromEntries(Object.entries(sealed).reverse());
    expect(whyUnauthenticated(reordered, before)).toBeUndefined();
    const edited = reread(sealed);
    edited.rowCounts['app.herd'] = 1999;
    expect(whyUnauthenticated(edited, before)).toMatch(/MAC \(key "k1"\) does not verify: the manifest was altered/);
    const added = { ...reread(sealed), restoredFrom: 'elsewhere' };
    expect(whyUnauthenticated(added, before)).toMatch(/does not verify/);
  });

  it('without a MAC, with a key not configured, or under a wrong key, it is refused and the reason says which', () => {
    expect(whyUnauthenticated(manifest, before)).toMatch(/^no MAC: with encryption configured/);
    const sealed = reread(sealManifest(manifest, before));
    expect(whyUnauthenticated(sealed, new Keyring('k2', { k2: b64(k2) }))).toBe(
      'its MAC is by key "k1", which is not configured (add it to encryption.previousKeys to read what was ' +
        'written with it)',
    );
    expect(whyUnauthenticated(sealed, new Keyring('k1', { k1: randomBytes(32).toString('base64') }))).toMatch(
      /by key "k1", and the key configured under that id is another one \(a wrong key\)/,
    );
    expect(whyUnauthenticated({ ...sealed, mac: { keyId: 'k1' } }, before)).toMatch(/^mac: must be/);
    // Encryption not configured: nothing to check with, as before.
    expect(whyUnauthenticated(manifest, undefined)).toBeUndefined();
  });

  it('after a rotation, new manifests name the current key and old ones still verify with theirs', () => {
    const old = reread(sealManifest(manifest, before));
    const fresh = reread(sealManifest(manifest, rotated));
    expect(fresh.mac.keyId).toBe('k2');
    expect(whyUnauthenticated(old, rotated)).toBeUndefined();
    expect(whyUnauthenticated(fresh, rotated)).toBeUndefined();
    // The MAC key is derived from the encryption key, not the key itself: no secret appears in a manifest.
    expect(JSON.stringify(fresh)).not.toContain(k2.key.toString('hex'));
    expect(JSON.stringify(fresh)).not.toContain(b64(k2));
  });
});
