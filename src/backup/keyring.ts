// The encryption keys of a configuration, by key id: the current one encrypts and
// authenticates what is written now; every configured one (encryption.keyId and
// encryption.previousKeys) reads what was written with it. The key bytes stay here and
// in the configuration's secrets, never in the Config object, a log or a result.
import { type Config, type ConfigSecrets, configSecrets } from '../core/config.ts';
import { type EncryptionKey, parseKey } from '../core/key.ts';

export class Keyring {
  constructor(
    /** The id of the key new objects and manifests are written with. */
    readonly currentId: string,
    private readonly texts: ConfigSecrets['keys'],
  ) {}

  get current(): EncryptionKey {
    return parseKey(this.currentId, this.texts[this.currentId] ?? '');
  }

  /** The key of an id, or undefined when no key of that id is configured. */
  byId(id: string): EncryptionKey | undefined {
    const text = Object.hasOwn(this.texts, id) ? this.texts[id] : undefined;
    return text ? parseKey(id, text) : undefined;
  }
}

/** The keys of a configuration, or undefined when encryption is not configured. */
export function keyringOf(encryption: Config['encryption'] | undefined, secrets: ConfigSecrets): Keyring | undefined {
  return encryption ? new Keyring(encryption.keyId, secrets.keys) : undefined;
}

export const keyringFor = (config: Config) => keyringOf(config.encryption, configSecrets(config));
