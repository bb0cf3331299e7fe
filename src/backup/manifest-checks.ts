// What a manifest must be before anything trusts it. A manifest, a restore-check verdict
// or a bucket's object is data: its names pass the same validators as a payload's
// (names.ts), it must describe the thing beside which it lies (its own file name, its
// target, its key in the bucket), and a manifest that does not is refused, by name,
// never listed nor acted on. With encryption configured, a manifest's MAC is checked
// before anything else in it (manifest-mac.ts).
import { z } from 'zod';
import type { Keyring } from './keyring.ts';
import { whyUnauthenticated } from './manifest-mac.ts';
import { baseBackupLabel, dumpFileName, walSegmentName } from './names.ts';

/** A manifest or record that was read and refused: where it is, and why. */
export interface Refusal {
  /** The local path or s3:// URL of what was refused. */
  object: string;
  reason: string;
}

/** How a job's log says it: "refused s3://b/k: file \"../x\": must be a dump file name …". */
export const refusalLine = (r: Refusal) => `refused ${r.object}: ${r.reason}`;

/** The bucket's side of a check: which bucket, where an object of a name must be, the keys that authenticate. */
export interface BucketPlace {
  readonly bucket: string;
  /** With encryption configured: a manifest must carry a MAC that verifies under one of these keys. */
  readonly keyring?: Keyring;
  objectKey(kind: 'dumps' | 'partitions', target: string, name: string, encrypted: boolean): string;
}

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 in hex');
const time = z.iso.datetime({ message: 'must be an ISO 8601 UTC time' });
const count = z.number().int().nonnegative();
const mustBe = <T extends string | number>(value: T) => z.literal(value, { error: `must be ${JSON.stringify(value)}` });

export const storedObjectSchema = z
  .object({
    bucket: z.string().min(1),
    key: z.string().min(1),
    bytes: count,
    sha256: sha256Hex,
    encryption: z
      .object({ algorithm: mustBe('aes-256-gcm-chunked'), keyId: z.string().min(1) })
      .loose()
      .nullable(),
    uploadedAt: time,
  })
  .loose();

const dumpManifestSchema = (target: string) =>
  z
    .object({
      kind: mustBe('pgmaint-dump'),
      version: mustBe(1),
      file: dumpFileName,
      format: z.enum(['custom', 'directory']),
      target: mustBe(target),
      finishedAt: time,
      bytes: count,
      sha256: sha256Hex,
      rowCounts: z.record(z.string(), z.number().int()).optional(),
      object: storedObjectSchema.optional(),
    })
    .loose();

export const restoreCheckSchema = z
  .object({
    checkedAt: time,
    ok: z.boolean(),
    tablesCompared: count,
    mismatches: z.array(z.object({ table: z.string(), dumped: z.number(), restored: z.number() }).loose()),
    restoreSeconds: z.number().nonnegative(),
    jobId: z.string(),
  })
  .loose();

const baseManifestSchema = (target: string, label: string) =>
  z
    .object({
      kind: mustBe('pgmaint-base-backup'),
      version: mustBe(1),
      label: baseBackupLabel.pipe(mustBe(label)),
      target: mustBe(target),
      format: z.enum(['tar', 'plain']),
      compression: z.enum(['none', 'gzip', 'lz4', 'zstd']),
      systemIdentifier: z.string().regex(/^\d{1,20}$/, 'must be a system identifier'),
      timeline: z.number().int().min(1),
      walSegmentSize: z
        .number()
        .int()
        .refine((n) => n >= 1 << 20 && n <= 1 << 30 && (n & (n - 1)) === 0, 'must be a power of 2 from 1 MB to 1 GB'),
      startWal: walSegmentName,
      stopWal: walSegmentName,
      stoppedAt: time,
      bytes: count,
    })
    .loose();

/** "file \"../x\" must be a dump file name …": the first issue, with the value refused. */
function explain(input: unknown, error: z.ZodError): string {
  const issue = error.issues[0]!;
  if (!issue.path.length) return issue.message;
  let value: unknown = input;
  for (const k of issue.path) value = (value as Record<PropertyKey, unknown> | undefined)?.[k as string];
  const shown = value === undefined ? 'missing' : JSON.stringify(value).slice(0, 120);
  return `${issue.path.join('.')} ${shown}: ${issue.message}`;
}

type Checked<T> = { ok: true; value: T } | { ok: false; reason: string };

/**
 * A dump manifest found as `name` (its file name, or the last part of its key) while
 * listing `target`: it must describe `<file>.manifest.json` = name, and its object, when a
 * bucket is given, must be that bucket's object of the same name. With the bucket's keyring
 * (encryption configured) its MAC is checked first, local manifest or the bucket's.
 */
export function checkDumpManifest<T>(input: unknown, target: string, name: string, place?: BucketPlace): Checked<T> {
  const unauthenticated = whyUnauthenticated(input, place?.keyring);
  if (unauthenticated) return { ok: false, reason: unauthenticated };
  const parsed = dumpManifestSchema(target).safeParse(input);
  if (!parsed.success) return { ok: false, reason: explain(input, parsed.error) };
  const m = parsed.data;
  if (name !== `${m.file}.manifest.json`) {
    return { ok: false, reason: `it describes ${JSON.stringify(m.file)}, not the dump its name says` };
  }
  const objectRefused = m.object && place && checkObject(m.object, place, 'dumps', target, m.file);
  if (objectRefused) return { ok: false, reason: objectRefused };
  return { ok: true, value: m as T };
}

/** Why a stored object's record does not point at the bucket's object of that name, or undefined. */
export function checkObject(
  o: { bucket: string; key: string; encryption: object | null },
  place: BucketPlace,
  kind: 'dumps' | 'partitions',
  target: string,
  name: string,
): string | undefined {
  if (o.bucket !== place.bucket) return `object.bucket ${JSON.stringify(o.bucket)} is not the configured bucket`;
  const key = place.objectKey(kind, target, name, o.encryption !== null);
  if (o.key !== key) return `object.key ${JSON.stringify(o.key).slice(0, 200)}: must be ${JSON.stringify(key)}`;
  return undefined;
}

export function checkRestoreCheck<T>(input: unknown): Checked<T> {
  const parsed = restoreCheckSchema.safeParse(input);
  return parsed.success ? { ok: true, value: parsed.data as T } : { ok: false, reason: explain(input, parsed.error) };
}

/** A base backup's pgmaint.json, found in the directory `label` while listing `target`. */
export function checkBaseManifest<T>(input: unknown, target: string, label: string): Checked<T> {
  const parsed = baseManifestSchema(target, label).safeParse(input);
  return parsed.success ? { ok: true, value: parsed.data as T } : { ok: false, reason: explain(input, parsed.error) };
}

/**
 * JSON text as a value, or the reason it is not JSON: where, never what (JSON.parse's
 * message quotes the text, and a refusal is shown to viewers).
 */
export function parseJson(text: string): Checked<unknown> {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    const at = /at position (\d+)/.exec((err as Error).message)?.[1];
    return { ok: false, reason: at === undefined ? 'not JSON' : `not JSON (at position ${at})` };
  }
}

/** What identifies a dump in its manifest. */
interface DumpIdentity {
  format: string;
  finishedAt: string;
  bytes: number;
  sha256: string;
  object?: { key: string; bytes: number; sha256: string };
}

/**
 * The fields in which the bucket's manifest of a dump disagrees with the local one of the
 * same name (none: they describe the same dump). A local manifest without an object
 * (written before a bucket was configured) has nothing to compare it with.
 */
export function disagreement(local: DumpIdentity, bucket: DumpIdentity): string[] {
  const differ: string[] = (['format', 'finishedAt', 'bytes', 'sha256'] as const).filter((f) => local[f] !== bucket[f]);
  const [l, b] = [local.object, bucket.object];
  if (l && (l.key !== b?.key || l.bytes !== b.bytes || l.sha256 !== b.sha256)) differ.push('object');
  return differ;
}
