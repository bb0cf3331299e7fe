// The tests' bucket: s3rver over TLS (src/dev/s3.ts), named in a config file as a deployment
// would, its credentials passed through the environment by name, never in the file.
import type { S3Server } from '../../src/dev/s3.ts';

/** The `objectStore` block for `s3`: the bucket holds the only copy (keepLocal false). */
export function bucketConfig(s3: S3Server) {
  return {
    bucket: s3.bucket,
    endpoint: s3.endpoint,
    forcePathStyle: true,
    caFile: s3.caFile,
    accessKeyIdEnv: 'TEST_S3_KEY',
    secretAccessKeyEnv: 'TEST_S3_SECRET',
    keepLocal: false,
  };
}

/** The environment `bucketConfig` reads the credentials from. */
export function bucketCredentials(s3: S3Server): Record<string, string> {
  return { TEST_S3_KEY: s3.accessKeyId, TEST_S3_SECRET: s3.secretAccessKey };
}
