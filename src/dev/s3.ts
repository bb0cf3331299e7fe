// An S3 API on this machine for the tests and the off-site demo: s3rver over TLS, with a self-signed
// certificate made at start (pgBackRest speaks to S3 only over HTTPS), on a free
// port, with one bucket. Credentials are s3rver's fixed test pair.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import S3rver from 's3rver';
import { childEnv } from '../core/proc.ts';

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

export async function startS3(dir: string, bucket = 'pgmaint'): Promise<S3Server> {
  fs.mkdirSync(dir, { recursive: true });
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { stdio: 'ignore', env: childEnv() },
  );
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
  return {
    endpoint: `https://127.0.0.1:${port}`,
    // pgBackRest matches a certificate by name, not by IP address.
    host: 'localhost',
    port,
    bucket,
    region: 'us-east-1',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    caFile: cert,
    stop: () => server.close(),
  };
}
