// Object storage for what pgBackRest does not hold: logical dumps and partition
// archives go to an S3-compatible bucket once verified locally, encrypted when a key
// is configured. An upload counts only after the stored object is read back and its
// sha256 matches what was sent. Credentials come from environment variables, named
// in the config file, and are read only here.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { PassThrough, type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { type Config, type ConfigSecrets, configSecrets } from '../core/config.ts';
import { type EncryptionKey, parseKey } from '../core/key.ts';
import { decryptStream, encryptStream } from './encryption.ts';

export type ObjectStoreConfig = NonNullable<Config['objectStore']>;

/** What a manifest records of an uploaded file. */
export interface StoredObject {
  bucket: string;
  key: string;
  bytes: number;
  /** Of the stored bytes (ciphertext when encrypted), checked by reading the object back. */
  sha256: string;
  encryption: { algorithm: 'aes-256-gcm-chunked'; keyId: string } | null;
  uploadedAt: string;
}

/** s3://bucket/key: where an uploaded file is, as results and logs name it. */
export const objectUrl = (o: Pick<StoredObject, 'bucket' | 'key'>) => `s3://${o.bucket}/${o.key}`;

export class ObjectStore {
  private readonly client: S3Client;

  constructor(
    private readonly cfg: ObjectStoreConfig,
    private readonly encryption: Config['encryption'],
    private readonly secrets: ConfigSecrets,
  ) {
    this.client = new S3Client({
      region: cfg.region,
      endpoint: cfg.endpoint,
      forcePathStyle: cfg.forcePathStyle,
      credentials: secrets.s3,
      requestHandler: cfg.caFile
        ? new NodeHttpHandler({ httpsAgent: new Agent({ ca: readFileSync(cfg.caFile) }) })
        : undefined,
    });
  }

  /** The object key of a file: prefix, kind, target, name. */
  keyFor(kind: 'dumps' | 'partitions', target: string, name: string): string {
    return `${this.cfg.prefix}${kind}/${target}/${name}${this.encryption ? '.enc' : ''}`;
  }

  private currentKey(): EncryptionKey | undefined {
    const e = this.encryption;
    return e ? parseKey(e.keyId, this.secrets.keys[e.keyId] ?? '') : undefined;
  }

  private keyById(id: string): EncryptionKey | undefined {
    const text = this.secrets.keys[id];
    return text ? parseKey(id, text) : undefined;
  }

  /** Uploads a local file (encrypted when a key is configured), then reads it back to prove it. */
  async upload(file: string, key: string, signal?: AbortSignal): Promise<StoredObject> {
    const k = this.currentKey();
    const hash = createHash('sha256');
    let bytes = 0;
    // Hashes what is sent as it passes; a Transform, not a 'data' listener, so the
    // uploader's reads keep their pace (no second consumer in flowing mode).
    const tap = new Transform({
      transform(c: Buffer, _enc, cb) {
        hash.update(c);
        bytes += c.length;
        cb(null, c);
      },
    });
    const source = createReadStream(file, { highWaterMark: 1024 * 1024 });
    const body = k ? source.pipe(encryptStream(k)).pipe(tap) : source.pipe(tap);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.cfg.bucket, Key: key, Body: body },
      queueSize: 2,
      partSize: 8 * 1024 * 1024,
    });
    signal?.addEventListener('abort', () => void upload.abort(), { once: true });
    await upload.done();
    const sha256 = hash.digest('hex');
    const stored = await this.sha256Of(key, signal);
    if (stored.sha256 !== sha256 || stored.bytes !== bytes) {
      throw new Error(
        `s3://${this.cfg.bucket}/${key}: the stored object (${stored.bytes} bytes, sha256 ${stored.sha256}) ` +
          `differs from what was uploaded (${bytes} bytes, sha256 ${sha256})`,
      );
    }
    return {
      bucket: this.cfg.bucket,
      key,
      bytes,
      sha256,
      encryption: k ? { algorithm: 'aes-256-gcm-chunked', keyId: k.id } : null,
      uploadedAt: new Date().toISOString(),
    };
  }

  private async open(key: string, signal?: AbortSignal): Promise<Readable> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: key }), {
        abortSignal: signal,
      });
      return res.Body as Readable;
    } catch (err) {
      const missing = (err as { name?: string }).name === 'NoSuchKey';
      const why = missing ? 'the object does not exist' : (err as Error).message;
      throw new Error(`s3://${this.cfg.bucket}/${key}: ${why}`);
    }
  }

  /** sha256 and size of the object as stored. */
  async sha256Of(key: string, signal?: AbortSignal): Promise<{ sha256: string; bytes: number }> {
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const c of await this.open(key, signal)) {
      hash.update(c as Buffer);
      bytes += (c as Buffer).length;
    }
    return { sha256: hash.digest('hex'), bytes };
  }

  /**
   * Downloads an object to a local file, checking the stored bytes against the
   * manifest's sha256 and decrypting them; the caller checks the plain file's sha256.
   */
  async download(o: StoredObject, file: string, signal?: AbortSignal): Promise<void> {
    const what = `s3://${o.bucket}/${o.key}`;
    const hash = createHash('sha256');
    const tap = new PassThrough();
    tap.on('data', (c: Buffer) => hash.update(c));
    const stages: NodeJS.ReadWriteStream[] = [tap];
    if (o.encryption) stages.push(decryptStream((id) => this.keyById(id), what));
    try {
      await pipeline([await this.open(o.key, signal), ...stages, createWriteStream(file)], { signal });
    } catch (err) {
      throw new Error(
        (err as Error).message.startsWith('s3://') ? (err as Error).message : `${what}: ${(err as Error).message}`,
      );
    }
    const sha256 = hash.digest('hex');
    if (sha256 !== o.sha256)
      throw new Error(`${what}: the stored object's sha256 ${sha256} differs from the manifest's ${o.sha256}`);
  }

  /** The key of a dump's or archive's manifest: beside the object, without the .enc suffix. */
  manifestKey(kind: 'dumps' | 'partitions', target: string, name: string): string {
    return `${this.cfg.prefix}${kind}/${target}/${name}.manifest.json`;
  }

  async putJson(key: string, value: unknown): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.cfg.bucket,
        Key: key,
        Body: JSON.stringify(value, null, 2),
        ContentType: 'application/json',
      }),
    );
  }

  async getJson<T>(key: string): Promise<T | undefined> {
    try {
      const chunks: Buffer[] = [];
      for await (const c of await this.open(key)) chunks.push(c as Buffer);
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
    } catch {
      return undefined;
    }
  }

  /** Keys under a prefix (every page). */
  async list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of page.Contents ?? []) if (o.Key) keys.push(o.Key);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys;
  }

  /** The folder of a kind and target, for list(). */
  folder(kind: 'dumps' | 'partitions', target: string): string {
    return `${this.cfg.prefix}${kind}/${target}/`;
  }

  async remove(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: key }));
  }

  close(): void {
    this.client.destroy();
  }
}

/** The bucket of this configuration, or undefined when objectStore is not configured. */
export function objectStoreFor(config: Config): ObjectStore | undefined {
  return config.objectStore ? new ObjectStore(config.objectStore, config.encryption, configSecrets(config)) : undefined;
}

/** Runs fn with the configured bucket (or undefined), closing its client after. */
export async function withObjectStore<T>(
  config: Config,
  fn: (store: ObjectStore | undefined) => Promise<T>,
): Promise<T> {
  const store = objectStoreFor(config);
  try {
    return await fn(store);
  } finally {
    store?.close();
  }
}
