// The AWS SDK, loaded when a store first reaches the bucket: it is a fifth of a second of
// loading, which a command that never does (`pgmaint enqueue … --wait`) does not pay.

export type Sdk = typeof import('@aws-sdk/client-s3') &
  typeof import('@aws-sdk/lib-storage') &
  Pick<typeof import('./s3-client.ts'), 's3ClientFor'>;

let loading: Promise<Sdk> | undefined;

/** The SDK's S3 client and commands, its multipart Upload, and the client of a configuration; loaded once. */
export function loadSdk(): Promise<Sdk> {
  loading ??= Promise.all([
    import('@aws-sdk/client-s3'),
    import('@aws-sdk/lib-storage'),
    import('./s3-client.ts'),
  ]).then(([s3, storage, client]) => ({ ...s3, ...storage, s3ClientFor: client.s3ClientFor }));
  return loading;
}
