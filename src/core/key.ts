// Encryption keys for backups in object storage: a 32-byte key, named by its id.

export interface EncryptionKey {
  id: string;
  key: Buffer;
}

/** A 32-byte key from base64 or hex text (an environment variable's value). */
export function parseKey(id: string, text: string): EncryptionKey {
  const t = text.trim();
  const key = /^[0-9a-f]{64}$/i.test(t) ? Buffer.from(t, 'hex') : Buffer.from(t, 'base64');
  if (key.length !== 32) throw new Error('must be 32 bytes, as 64 hex digits or base64');
  return { id, key };
}
