// Encryption at rest for logical dumps and partition archives: AES-256-GCM from
// node:crypto, in 1 MiB chunks so it streams. Each chunk has its own nonce and tag,
// and its index, a last-chunk flag and the object's header are authenticated with it,
// so a reordered, truncated, extended or flipped byte fails decryption, and so does a
// chunk spliced in from another object (each object's header holds a random id). The
// key id is in the header (and in the manifest); the key itself never leaves the
// environment variable.
//
// Layout (PGMENC2, written since objects were bound to their id): "PGMENC2\n", key id
// length (1 byte), key id, object id (16 random bytes), then chunks of
// [nonce 12][length 4, big-endian][ciphertext][tag 16]; a chunk's associated data is the
// header, its index (8 bytes) and the last-chunk flag (1 byte).
// PGMENC1 (read only, for objects written before): the same without the object id, and
// a chunk's associated data only its index and flag.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { EncryptionKey } from '../core/key.ts';

const MAGIC = Buffer.from('PGMENC2\n');
const LEGACY_MAGIC = Buffer.from('PGMENC1\n');
const OBJECT_ID = 16;
const CHUNK = 1024 * 1024;
const NONCE = 12;
const TAG = 16;

/** A chunk's associated data: the object's header (empty for PGMENC1), its index and whether it is the last. */
function aad(header: Buffer, index: number, last: boolean): Buffer {
  const b = Buffer.alloc(header.length + 9);
  header.copy(b);
  b.writeBigUInt64BE(BigInt(index), header.length);
  b[header.length + 8] = last ? 1 : 0;
  return b;
}

/** Encrypts a stream; the output starts with the header that names the key id. */
export function encryptStream(k: EncryptionKey): Transform {
  // Input pieces are gathered and joined once per chunk, not re-copied on every write.
  let parts: Buffer[] = [];
  let size = 0;
  let index = 0;
  const id = Buffer.from(k.id, 'utf8');
  const header = Buffer.concat([MAGIC, Buffer.from([id.length]), id, randomBytes(OBJECT_ID)]);
  const seal = (plain: Buffer, last: boolean) => {
    const nonce = randomBytes(NONCE);
    const cipher = createCipheriv('aes-256-gcm', k.key, nonce);
    cipher.setAAD(aad(header, index++, last));
    const body = Buffer.concat([cipher.update(plain), cipher.final()]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    return Buffer.concat([nonce, len, body, cipher.getAuthTag()]);
  };
  return new Transform({
    construct(cb) {
      this.push(header);
      cb();
    },
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      parts.push(chunk);
      size += chunk.length;
      // Keep at least one byte back: the last chunk is only known at the end.
      if (size > CHUNK) {
        let pending = Buffer.concat(parts, size);
        while (pending.length > CHUNK) {
          this.push(seal(pending.subarray(0, CHUNK), false));
          pending = pending.subarray(CHUNK);
        }
        parts = [pending];
        size = pending.length;
      }
      cb();
    },
    flush(cb) {
      this.push(seal(Buffer.concat(parts, size), true));
      cb();
    },
  });
}

/**
 * Decrypts what encryptStream wrote (PGMENC2, or PGMENC1 of old); `keys` finds the key by
 * the id in the header. `what` names the object in every failure.
 */
export function decryptStream(keys: (id: string) => EncryptionKey | undefined, what: string): Transform {
  let buf = Buffer.alloc(0);
  // Pieces read since the last pass, joined once a whole chunk may be there.
  let parts: Buffer[] = [];
  let size = 0;
  let key: EncryptionKey | undefined;
  /** What each chunk's associated data starts with: the header (PGMENC2), or nothing (PGMENC1). */
  let bound = Buffer.alloc(0);
  let index = 0;
  let sawLast = false;
  const fail = (why: string) => new Error(`${what}: cannot decrypt: ${why}`);
  /** Decrypts every complete chunk in buf; false while the header is still incomplete. */
  const drain = (push: (b: Buffer) => void): void => {
    if (parts.length) {
      buf = Buffer.concat([buf, ...parts]);
      parts = [];
      size = 0;
    }
    if (!key) {
      if (buf.length < MAGIC.length + 1) return;
      const magic = buf.subarray(0, MAGIC.length);
      const legacy = magic.equals(LEGACY_MAGIC);
      if (!legacy && !magic.equals(MAGIC)) throw fail('not a pgmaint encrypted object');
      const idLen = buf[MAGIC.length]!;
      const headerLength = MAGIC.length + 1 + idLen + (legacy ? 0 : OBJECT_ID);
      if (buf.length < headerLength) return;
      const id = buf.subarray(MAGIC.length + 1, MAGIC.length + 1 + idLen).toString('utf8');
      key = keys(id);
      if (!key) throw fail(`it was encrypted with key "${id}", which is not configured`);
      bound = legacy ? Buffer.alloc(0) : Buffer.from(buf.subarray(0, headerLength));
      buf = buf.subarray(headerLength);
    }
    for (;;) {
      if (buf.length < NONCE + 4) return;
      const len = buf.readUInt32BE(NONCE);
      if (len > CHUNK) throw fail('a chunk is larger than any this format writes (damaged)');
      const total = NONCE + 4 + len + TAG;
      if (buf.length < total) return;
      if (sawLast) throw fail('data follows the last chunk');
      // A chunk is the last one exactly when nothing follows it; try as written.
      const open = (last: boolean) => {
        const d = createDecipheriv('aes-256-gcm', key!.key, buf.subarray(0, NONCE));
        d.setAAD(aad(bound, index, last));
        d.setAuthTag(buf.subarray(total - TAG, total));
        return Buffer.concat([d.update(buf.subarray(NONCE + 4, total - TAG)), d.final()]);
      };
      let plain: Buffer;
      try {
        plain = open(false);
      } catch {
        try {
          plain = open(true);
          sawLast = true;
        } catch {
          throw fail(`chunk ${index} fails authentication (wrong key, or the object was altered or spliced)`);
        }
      }
      index++;
      buf = buf.subarray(total);
      push(plain);
    }
  };
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      size += chunk.length;
      if (key && buf.length + size < CHUNK + NONCE + 4 + TAG) return cb();
      try {
        drain((b) => this.push(b));
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
    flush(cb) {
      try {
        drain((b) => this.push(b));
      } catch (err) {
        return cb(err as Error);
      }
      if (!key) return cb(fail('the object is empty or has no header'));
      if (buf.length || !sawLast) return cb(fail('the object is truncated'));
      cb();
    },
  });
}
