// Manifests are authenticated: with encryption configured, every dump and partition-archive
// manifest carries an HMAC-SHA256 over its canonical serialization, under a key derived
// (HKDF, its own info string) from the current encryption key, whose id it names. A
// manifest is data anyone with write access to the bucket or BACKUP_DIR could have
// written; its sha256, row counts and object key are believed only once its MAC verifies.
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import type { EncryptionKey } from '../core/key.ts';
import type { Keyring } from './keyring.ts';

export interface ManifestMac {
  algorithm: 'hmac-sha256';
  keyId: string;
  /** A value derived from the key that tells a wrong key from an altered manifest (it reveals nothing of the key). */
  keyCheck: string;
  /** Of the canonical serialization of the manifest without its `mac`. */
  value: string;
}

const derive = (k: EncryptionKey, info: string) =>
  Buffer.from(hkdfSync('sha256', k.key, Buffer.alloc(0), Buffer.from(info), 32));
const macKey = (k: EncryptionKey) => derive(k, 'pgmaint manifest mac v1');
const keyCheck = (k: EncryptionKey) => derive(k, 'pgmaint manifest key check v1').subarray(0, 8).toString('hex');

/** JSON with every object's keys sorted, no spaces: one text for one value, however it was written. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

function macOf(k: EncryptionKey, manifest: object): string {
  const { mac: _mac, ...rest } = manifest as Record<string, unknown>;
  return createHmac('sha256', macKey(k)).update(canonicalJson(rest)).digest('hex');
}

/** The manifest with its MAC under the current key; as it is when encryption is not configured. */
export function sealManifest<T extends object>(manifest: T, keys: Keyring | undefined): T {
  if (!keys) return manifest;
  const k = keys.current;
  const mac: ManifestMac = { algorithm: 'hmac-sha256', keyId: k.id, keyCheck: keyCheck(k), value: macOf(k, manifest) };
  return { ...manifest, mac };
}

/**
 * Why a manifest (as parsed from its JSON) is not authenticated, or undefined when its MAC
 * verifies. Without a keyring (encryption not configured) nothing can be checked: undefined.
 */
export function whyUnauthenticated(manifest: unknown, keys: Keyring | undefined): string | undefined {
  if (!keys) return undefined;
  if (!manifest || typeof manifest !== 'object' || Array.isArray(manifest)) return 'not a JSON object';
  const mac = (manifest as { mac?: unknown }).mac;
  if (mac === undefined) {
    return (
      'no MAC: with encryption configured a manifest must carry one (it was written before pgmaint ' +
      'authenticated manifests, or its MAC was removed)'
    );
  }
  const m = mac as Partial<Record<keyof ManifestMac, unknown>>;
  const hex = (v: unknown, n: number) => typeof v === 'string' && new RegExp(`^[0-9a-f]{${n}}$`).test(v);
  if (
    !m ||
    typeof m !== 'object' ||
    m.algorithm !== 'hmac-sha256' ||
    typeof m.keyId !== 'string' ||
    !/^[A-Za-z0-9._-]{1,64}$/.test(m.keyId) ||
    !hex(m.keyCheck, 16) ||
    !hex(m.value, 64)
  ) {
    return 'mac: must be {algorithm "hmac-sha256", keyId, keyCheck, value} as pgmaint writes it';
  }
  const k = keys.byId(m.keyId);
  if (!k) {
    return (
      `its MAC is by key "${m.keyId}", which is not configured ` +
      '(add it to encryption.previousKeys to read what was written with it)'
    );
  }
  if (keyCheck(k) !== m.keyCheck) {
    return `its MAC is by key "${m.keyId}", and the key configured under that id is another one (a wrong key)`;
  }
  const expected = Buffer.from(macOf(k, manifest), 'hex');
  if (!timingSafeEqual(expected, Buffer.from(m.value as string, 'hex'))) {
    return `its MAC (key "${m.keyId}") does not verify: the manifest was altered after it was written`;
  }
  return undefined;
}
