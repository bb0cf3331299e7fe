// The S3 client of an objectStore configuration, with its deadlines: what ObjectStore
// uses, and what the off-site bench's plain SDK upload uses, so both run alike.
import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { Config, ConfigSecrets } from '../core/config.ts';

export type ObjectStoreConfig = NonNullable<Config['objectStore']>;

/**
 * The S3 client of a configuration, with its deadlines. Each attempt: a TCP connection
 * within connectTimeoutMs, the answer's first byte within requestTimeoutMs, and no
 * silence longer than that while it streams. Failed attempts are retried with
 * exponential backoff and jitter (standard mode), up to the answer's headers.
 */
export function s3ClientFor(cfg: ObjectStoreConfig, credentials: ConfigSecrets['s3']): S3Client {
  return new S3Client({
    region: cfg.region,
    endpoint: cfg.endpoint,
    forcePathStyle: cfg.forcePathStyle,
    credentials,
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
