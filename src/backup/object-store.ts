// Object storage for what pgBackRest does not hold: logical dumps and partition
// archives go to an S3-compatible bucket once verified locally, encrypted when a key
// is configured. An upload counts only after the stored object is read back and its
// sha256 matches what was sent. Credentials come from environment variables, named
// in the config file, and are read only here. Every request has a deadline (connect,
// and answer) and is retried with backoff; a failure names S3, the bucket and the key.
// A read that someone waits for (an API answer, a health reading) has a short deadline
// of its own on top (ANSWER_DEADLINE_MS), whatever the job-sized ones are.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { addAbortSignal, PassThrough, type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { S3Client } from '@aws-sdk/client-s3';
import { type Config, type ConfigSecrets, configSecrets } from '../core/config.ts';
import { GovernorAbortedError, GovernorDeferredError, ObjectStoreError } from '../core/errors.ts';
import { decryptStream, encryptStream } from './encryption.ts';
import { type Keyring, keyringOf } from './keyring.ts';
import type { BucketPlace } from './manifest-checks.ts';
import { MAX_CATALOG_OBJECT_BYTES, type ObjectText, tooLarge } from './manifest-read.ts';
import type { ObjectStoreConfig } from './s3-client.ts';
import { loadSdk, type Sdk } from './s3-sdk.ts';

/** How long the bucket may take, in all, on a read that answers someone: routes answer within 5 s. */
export const ANSWER_DEADLINE_MS = 4000;

/** Errors of a transfer that broke off after the answer began: read again from the start. */
const BROKEN_TRANSFER = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ERR_STREAM_PREMATURE_CLOSE']);
const brokenTransfer = (err: unknown) => {
  const e = err as NodeJS.ErrnoException;
  return e?.name === 'TimeoutError' || BROKEN_TRANSFER.has(e?.code ?? '');
};

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
  private client?: S3Client;
  private closed = false;
  private readonly credentials: ConfigSecrets['s3'];
  /** With answerWithinMs: aborts every request still running that long after this store was made. */
  private readonly deadline?: AbortSignal;
  /** The encryption keys, when encryption is configured: objects and manifests are written with the current one. */
  readonly keyring: Keyring | undefined;

  constructor(
    private readonly cfg: ObjectStoreConfig,
    private readonly encryption: Config['encryption'],
    secrets: ConfigSecrets,
    private readonly answerWithinMs?: number,
  ) {
    this.credentials = secrets.s3;
    this.keyring = keyringOf(encryption, secrets);
    if (answerWithinMs !== undefined) this.deadline = AbortSignal.timeout(answerWithinMs);
  }

  /** The SDK, and this store's client, made on first use. */
  private async s3(): Promise<{ sdk: Sdk; client: S3Client }> {
    const sdk = await loadSdk();
    if (this.closed) throw new ObjectStoreError(`s3://${this.cfg.bucket}: the store was closed`);
    this.client ??= sdk.s3ClientFor(this.cfg, this.credentials);
    return { sdk, client: this.client };
  }

  /** The caller's signal and this store's deadline, whichever comes first. */
  private signalFor(signal?: AbortSignal): AbortSignal | undefined {
    if (!this.deadline) return signal;
    return signal ? AbortSignal.any([signal, this.deadline]) : this.deadline;
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

  /**
   * An error that names S3, the bucket and the key, and says what the SDK's error means.
   * mid: it broke off after the answer began (attempts: how often the object was read).
   */
  private failure(
    what: 'upload' | 'download' | 'listing' | 'removal',
    key: string,
    err: unknown,
    mid?: { attempts: number },
  ): Error {
    const e = err as Error & { $metadata?: { attempts?: number } };
    if (e.name === 'NoSuchKey') {
      return Object.assign(new ObjectStoreError(`${this.url(key)}: the object does not exist`, { cause: err }), {
        s3Missing: true,
      });
    }
    let why = e.message;
    if (this.deadline?.aborted)
      why = `no answer within ${this.answerWithinMs} ms (the deadline of a read that answers a request)`;
    else if (mid && e.name === 'TimeoutError')
      why =
        `the transfer stalled: no data for ${this.cfg.requestTimeoutMs} ms after the answer began ` +
        '(objectStore.requestTimeoutMs)';
    else if (mid) why = `the transfer broke off after the answer began: ${why}`;
    else if (e.name === 'TimeoutError' && /establish a connection/.test(why))
      why = `no connection within ${this.cfg.connectTimeoutMs} ms (objectStore.connectTimeoutMs)`;
    else if (e.name === 'TimeoutError')
      why = `no answer within ${this.cfg.requestTimeoutMs} ms (objectStore.requestTimeoutMs)`;
    else if (e.name && e.name !== 'Error' && !why.includes(e.name)) why = `${e.name}: ${why}`;
    const attempts = mid?.attempts ?? e.$metadata?.attempts ?? 0;
    return new ObjectStoreError(
      `${this.url(key)}: S3 ${what} failed: ${why}${attempts > 1 ? ` (${attempts} attempts)` : ''}`,
      {
        cause: err,
      },
    );
  }

  /**
   * Uploads a local file (encrypted when a key is configured), then reads it back to prove it.
   * `pace` (the load governor's pacer) stops the reading while the run is held.
   */
  async upload(file: string, key: string, signal?: AbortSignal, pace?: Transform): Promise<StoredObject> {
    const { sdk, client } = await this.s3();
    const k = this.keyring?.current;
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
    const read = createReadStream(file, { highWaterMark: 1024 * 1024 });
    const source = pace ? read.pipe(pace) : read;
    const body = k ? source.pipe(encryptStream(k)).pipe(tap) : source.pipe(tap);
    const upload = new sdk.Upload({
      client,
      params: { Bucket: this.cfg.bucket, Key: key, Body: body },
      queueSize: 2,
      partSize: 8 * 1024 * 1024,
    });
    signal?.addEventListener('abort', () => void upload.abort(), { once: true });
    // .pipe() carries no error on: the pacer's own (deferred by load) stops the upload here.
    let paceFailure: unknown;
    pace?.on('error', (err) => {
      paceFailure = err;
      void upload.abort();
    });
    await upload.done().catch((err: unknown) => {
      throw paceFailure ?? (signal?.aborted ? err : this.failure('upload', key, err));
    });
    if (paceFailure) throw paceFailure;
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

  /**
   * Reads an object's body with `consume` (given the body and its announced length). The
   * SDK retries a request only up to the answer's headers; a transfer that stalls or
   * breaks off after that is read again from the start, up to maxAttempts in all, so
   * `consume` must start afresh each time (its hash, the file it writes).
   */
  private async read<T>(
    key: string,
    signal: AbortSignal | undefined,
    consume: (body: Readable, length: number | undefined) => Promise<T>,
  ): Promise<T> {
    const abort = this.signalFor(signal);
    const { sdk, client } = await this.s3();
    for (let attempt = 1; ; attempt++) {
      const res = await client
        .send(new sdk.GetObjectCommand({ Bucket: this.cfg.bucket, Key: key }), { abortSignal: abort })
        .catch((err) => {
          throw this.failure('download', key, err);
        });
      const body = res.Body as Readable;
      if (abort) addAbortSignal(abort, body);
      try {
        return await consume(body, res.ContentLength);
      } catch (err) {
        body.destroy();
        if (signal?.aborted || err instanceof ObjectStoreError) throw err;
        if (this.deadline?.aborted) throw this.failure('download', key, err);
        if (!brokenTransfer(err)) throw err;
        if (attempt >= this.cfg.maxAttempts) throw this.failure('download', key, err, { attempts: attempt });
      }
      // Backoff with full jitter, as the SDK's standard mode between its own attempts.
      await sleep(Math.random() * Math.min(20_000, 100 * 2 ** attempt), undefined, { signal: abort }).catch((err) => {
        throw signal?.aborted ? err : this.failure('download', key, err);
      });
    }
  }

  /** sha256 and size of the object as stored. */
  async sha256Of(key: string, signal?: AbortSignal): Promise<{ sha256: string; bytes: number }> {
    return this.read(key, signal, async (body) => {
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const c of body) {
        hash.update(c as Buffer);
        bytes += (c as Buffer).length;
      }
      return { sha256: hash.digest('hex'), bytes };
    }).catch((err) => {
      throw signal?.aborted || err instanceof ObjectStoreError ? err : this.failure('download', key, err);
    });
  }

  /**
   * Downloads an object to a local file, checking the stored bytes against the
   * manifest's sha256 and decrypting them; the caller checks the plain file's sha256.
   */
  async download(o: StoredObject, file: string, signal?: AbortSignal, pace?: () => Transform): Promise<void> {
    const what = `s3://${o.bucket}/${o.key}`;
    const sha256 = await this.read(o.key, signal, async (body) => {
      const hash = createHash('sha256');
      const tap = new PassThrough();
      tap.on('data', (c: Buffer) => hash.update(c));
      // A pacer per attempt: a broken pipeline destroys its stages.
      const stages: NodeJS.ReadWriteStream[] = pace ? [pace(), tap] : [tap];
      if (o.encryption) stages.push(decryptStream((id) => this.keyring?.byId(id), what));
      // createWriteStream truncates: a read started again writes the file again.
      await pipeline([body, ...stages, createWriteStream(file)], { signal });
      return hash.digest('hex');
    }).catch((err: unknown) => {
      const message = (err as Error).message;
      if (
        err instanceof ObjectStoreError ||
        err instanceof GovernorDeferredError ||
        err instanceof GovernorAbortedError ||
        signal?.aborted
      )
        throw err;
      throw new ObjectStoreError(message.startsWith('s3://') ? message : `${what}: ${message}`, { cause: err });
    });
    if (sha256 !== o.sha256)
      throw new Error(`${what}: the stored object's sha256 ${sha256} differs from the manifest's ${o.sha256}`);
  }

  /** The key of a dump's or archive's manifest: beside the object, without the .enc suffix. */
  manifestKey(kind: 'dumps' | 'partitions', target: string, name: string): string {
    return `${this.cfg.prefix}${kind}/${target}/${name}.manifest.json`;
  }

  async putJson(key: string, value: unknown): Promise<void> {
    const { sdk, client } = await this.s3();
    await client
      .send(
        new sdk.PutObjectCommand({
          Bucket: this.cfg.bucket,
          Key: key,
          Body: JSON.stringify(value, null, 2),
          ContentType: 'application/json',
        }),
        { abortSignal: this.signalFor() },
      )
      .catch((err) => {
        throw this.failure('upload', key, err);
      });
  }

  /**
   * A manifest's or verdict's text, undefined when there is no such object, or a refusal
   * when it is larger than maxBytes: by its announced length, or once more than that came.
   */
  async getText(key: string): Promise<ObjectText | undefined> {
    const maxBytes = MAX_CATALOG_OBJECT_BYTES;
    try {
      return await this.read(key, undefined, async (body, length): Promise<ObjectText> => {
        if (length !== undefined && length > maxBytes) {
          body.destroy();
          return tooLarge(`${length} bytes`);
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        for await (const c of body) {
          bytes += (c as Buffer).length;
          if (bytes > maxBytes) return tooLarge(`more than ${maxBytes} bytes`); // leaving the loop ends the read
          chunks.push(c as Buffer);
        }
        return { text: Buffer.concat(chunks).toString('utf8') };
      });
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
    const { sdk, client } = await this.s3();
    do {
      const page = await client
        .send(new sdk.ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: prefix, ContinuationToken: token }), {
          abortSignal: this.signalFor(),
        })
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
    const { sdk, client } = await this.s3();
    const remove = new sdk.DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: key });
    await client.send(remove, { abortSignal: this.signalFor() }).catch((err) => {
      throw this.failure('removal', key, err);
    });
  }

  close(): void {
    this.closed = true;
    this.client?.destroy();
  }
}

/**
 * The bucket of this configuration, or undefined when objectStore is not configured.
 * answerWithinMs (ANSWER_DEADLINE_MS for a read someone waits for): every request of this
 * store fails, naming S3 and the bucket, once that long has passed since it was made.
 */
export function objectStoreFor(config: Config, answerWithinMs?: number): ObjectStore | undefined {
  const { objectStore, encryption } = config;
  return objectStore ? new ObjectStore(objectStore, encryption, configSecrets(config), answerWithinMs) : undefined;
}

/** Runs fn with the configured bucket (or undefined), closing its client after. */
export async function withObjectStore<T>(
  config: Config,
  fn: (store: ObjectStore | undefined) => Promise<T>,
  answerWithinMs?: number,
): Promise<T> {
  const store = objectStoreFor(config, answerWithinMs);
  try {
    return await fn(store);
  } finally {
    store?.close();
  }
}
