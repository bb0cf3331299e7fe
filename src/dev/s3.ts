// An S3 API on this machine for the tests and the off-site demo: s3rver over TLS, with a self-signed
// certificate made at start (pgBackRest speaks to S3 only over HTTPS), on a free
// port, with one bucket. Its credentials are random, made at start: s3rver checks the
// access key id (an unknown one is refused) but not the signature, so a fixed secret
// would prove nothing about where a secret went; s3rver's built-in pair is revoked.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import S3rver from 's3rver';
import { childEnv } from '../core/proc.ts';

/** s3rver's account registry (lib/models/account.js), which its authentication checks key ids against. */
interface S3rverAccount {
  createKeyPair(accessKeyId: string, secretAccessKey: string): void;
  revokeAccessKey(accessKeyId: string): void;
}
const { DUMMY_ACCOUNT: account } = createRequire(import.meta.url)('s3rver/lib/models/account.js') as {
  DUMMY_ACCOUNT: S3rverAccount;
};

export interface S3Server {
  endpoint: string;
  host: string;
  port: number;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  caFile: string;
  stop(): Promise<void>;
}

/** A self-signed certificate (its own CA) in `dir`, for `commonName` and these subject alternative names. */
export function selfSignedCertificate(
  dir: string,
  commonName: string,
  altNames: string,
): { key: string; cert: string } {
  fs.mkdirSync(dir, { recursive: true });
  const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')];
  const subject = ['-subj', `/CN=${commonName}`, '-addext', `subjectAltName=${altNames}`];
  const request = ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1'];
  execFileSync('openssl', [...request, ...subject], { stdio: 'ignore', env: childEnv() });
  return { key, cert };
}

export async function startS3(dir: string, bucket = 'pgmaint'): Promise<S3Server> {
  const { key, cert } = selfSignedCertificate(dir, '127.0.0.1', 'IP:127.0.0.1,DNS:localhost');
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    key: fs.readFileSync(key),
    cert: fs.readFileSync(cert),
    silent: true,
    directory: path.join(dir, 'data'),
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = (await server.run()) as { port: number };
  // AWS's shapes: a 20-character key id, a 40-character secret.
  const accessKeyId = `AKPGM${randomBytes(8).toString('hex').toUpperCase().slice(0, 15)}`;
  const secretAccessKey = randomBytes(30).toString('base64url');
  account.revokeAccessKey('S3RVER');
  account.createKeyPair(accessKeyId, secretAccessKey);
  return {
    endpoint: `https://127.0.0.1:${port}`,
    // pgBackRest matches a certificate by name, not by IP address.
    host: 'localhost',
    port,
    bucket,
    region: 'us-east-1',
    accessKeyId,
    secretAccessKey,
    caFile: cert,
    stop: async () => {
      account.revokeAccessKey(accessKeyId);
      await server.close();
    },
  };
}
