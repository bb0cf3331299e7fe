// Object storage for what pgBackRest does not hold: logical dumps and partition
// archives go to an S3-compatible bucket once verified locally, encrypted when a key
// is configured. An upload counts only after the stored object is read back and its
// sha256 matches what was sent. Credentials come from environment variables, named
// in the config file, and are read only here. Every request has a deadline (connect,
// and answer) and is retried with backoff; a failure names S3, the bucket and the key.
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
import { ObjectStoreError } from '../core/errors.ts';
import { type EncryptionKey, parseKey } from '../core/key.ts';
import { decryptStream, encryptStream } from './encryption.ts';
import type { BucketPlace } from './manifest-checks.ts';

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

export class ObjectStore implements BucketPlace {
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
      // Each attempt: a TCP connection within connectTimeoutMs, the answer's first byte
      // within requestTimeoutMs, and no silence longer than that while it streams.
      // Failed attempts are retried with exponential backoff and jitter (standard mode).
      maxAttempts: cfg.maxAttempts,
      retryMode: 'standard',
      requestHandler: new NodeHttpHandler({
        connectionTimeout: cfg.connectTimeoutMs,
        requestTimeout: cfg.requestTimeoutMs,
        throwOnRequestTimeout: true,
        socketTimeout: cfg.requestTimeoutMs,
        httpsAgent: new Agent({
          keepAlive: true,
          maxSockets: 50,
          ...(cfg.caFile ? { ca: readFileSync(cfg.caFile) } : {}),
        }),
      }),
    });
  }

  get bucket(): string {
    return this.cfg.bucket;
  }

  /** The object key of a file: prefix, kind, target, name. */
  keyFor(kind: 'dumps' | 'partitions', target: string, name: string): string {
    return this.objectKey(kind, target, name, Boolean(this.encryption));
  }

  /** Where the object of a name lies, encrypted (.enc) or not, whatever the configuration says today. */
  objectKey(kind: 'dumps' | 'partitions', target: string, name: string, encrypted: boolean): string {
    return `${this.cfg.prefix}${kind}/${target}/${name}${encrypted ? '.enc' : ''}`;
  }

  /** An error that names S3, the bucket and the key, and says what the SDK's error means. */
  private failure(what: 'upload' | 'download' | 'listing' | 'removal', key: string, err: unknown): Error {
    const e = err as Error & { $metadata?: { attempts?: number } };
    if (e.name === 'NoSuchKey') {
      return Object.assign(new ObjectStoreError(`${this.url(key)}: the object does not exist`, { cause: err }), {
        s3Missing: true,
      });
    }
    let why = e.message;
    if (e.name === 'TimeoutError' && /establish a connection/.test(why))
      why = `no connection within ${this.cfg.connectTimeoutMs} ms (objectStore.connectTimeoutMs)`;
    else if (e.name === 'TimeoutError')
      why = `no answer within ${this.cfg.requestTimeoutMs} ms (objectStore.requestTimeoutMs)`;
    else if (e.name && e.name !== 'Error' && !why.includes(e.name)) why = `${e.name}: ${why}`;
    const attempts = e.$metadata?.attempts ?? 0;
    return new ObjectStoreError(
      `${this.url(key)}: S3 ${what} failed: ${why}${attempts > 1 ? ` (${attempts} attempts)` : ''}`,
      {
        cause: err,
      },
    );
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
    await upload.done().catch((err) => {
      throw signal?.aborted ? err : this.failure('upload', key, err);
    });
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
      throw this.failure('download', key, err);
    }
  }

  /** sha256 and size of the object as stored. */
  async sha256Of(key: string, signal?: AbortSignal): Promise<{ sha256: string; bytes: number }> {
    const hash = createHash('sha256');
    let bytes = 0;
    const body = await this.open(key, signal);
    try {
      for await (const c of body) {
        hash.update(c as Buffer);
        bytes += (c as Buffer).length;
      }
    } catch (err) {
      throw signal?.aborted ? err : this.failure('download', key, err);
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
      const message = (err as Error).message;
      if (err instanceof ObjectStoreError || signal?.aborted) throw err;
      throw new ObjectStoreError(message.startsWith('s3://') ? message : `${what}: ${message}`, { cause: err });
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
    await this.client
      .send(
        new PutObjectCommand({
          Bucket: this.cfg.bucket,
          Key: key,
          Body: JSON.stringify(value, null, 2),
          ContentType: 'application/json',
        }),
      )
      .catch((err) => {
        throw this.failure('upload', key, err);
      });
  }

  /** A small object's text, or undefined when there is no such object. */
  async getText(key: string): Promise<string | undefined> {
    try {
      const chunks: Buffer[] = [];
      for await (const c of await this.open(key)) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    } catch (err) {
      if ((err as { s3Missing?: boolean }).s3Missing) return undefined;
      throw err instanceof ObjectStoreError ? err : this.failure('download', key, err);
    }
  }

  /** s3://bucket/key, the name an object goes by in messages. */
  url(key: string): string {
    return `s3://${this.cfg.bucket}/${key}`;
  }

  /** Keys under a prefix (every page). */
  async list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.client
        .send(new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: prefix, ContinuationToken: token }))
        .catch((err) => {
          throw this.failure('listing', prefix, err);
        });
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
    await this.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: key })).catch((err) => {
      throw this.failure('removal', key, err);
    });
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
