// Encryption at rest for logical dumps and partition archives: AES-256-GCM from
// node:crypto, in 1 MiB chunks so it streams. Each chunk has its own nonce and tag,
// and its index and a last-chunk flag are authenticated with it, so a reordered,
// truncated, extended or flipped byte fails decryption. The key id is in the header
// (and in the manifest); the key itself never leaves the environment variable.
//
// Layout: "PGMENC1\n", key id length (1 byte), key id, then chunks of
// [nonce 12][length 4, big-endian][ciphertext][tag 16], the last one flagged in its AAD.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { EncryptionKey } from '../core/key.ts';

const MAGIC = Buffer.from('PGMENC1\n');
const CHUNK = 1024 * 1024;
const NONCE = 12;
const TAG = 16;

function aad(index: number, last: boolean): Buffer {
  const b = Buffer.alloc(9);
  b.writeBigUInt64BE(BigInt(index));
  b[8] = last ? 1 : 0;
  return b;
}

/** Encrypts a stream; the output starts with the header that names the key id. */
export function encryptStream(k: EncryptionKey): Transform {
  // Input pieces are gathered and joined once per chunk, not re-copied on every write.
  let parts: Buffer[] = [];
  let size = 0;
  let index = 0;
  const id = Buffer.from(k.id, 'utf8');
  const seal = (plain: Buffer, last: boolean) => {
    const nonce = randomBytes(NONCE);
    const cipher = createCipheriv('aes-256-gcm', k.key, nonce);
    cipher.setAAD(aad(index++, last));
    const body = Buffer.concat([cipher.update(plain), cipher.final()]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    return Buffer.concat([nonce, len, body, cipher.getAuthTag()]);
  };
  return new Transform({
    construct(cb) {
      this.push(Buffer.concat([MAGIC, Buffer.from([id.length]), id]));
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

/** Decrypts what encryptStream wrote; `keys` finds the key by the id in the header. */
export function decryptStream(keys: (id: string) => EncryptionKey | undefined, what: string): Transform {
  let buf = Buffer.alloc(0);
  // Pieces read since the last pass, joined once a whole chunk may be there.
  let parts: Buffer[] = [];
  let size = 0;
  let key: EncryptionKey | undefined;
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
      if (!buf.subarray(0, MAGIC.length).equals(MAGIC)) throw fail('not a pgmaint encrypted object');
      const idLen = buf[MAGIC.length]!;
      if (buf.length < MAGIC.length + 1 + idLen) return;
      const id = buf.subarray(MAGIC.length + 1, MAGIC.length + 1 + idLen).toString('utf8');
      key = keys(id);
      if (!key) throw fail(`it was encrypted with key "${id}", which is not configured`);
      buf = buf.subarray(MAGIC.length + 1 + idLen);
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
        d.setAAD(aad(index, last));
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
          throw fail(`chunk ${index} fails authentication (wrong key, or the object was altered)`);
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
