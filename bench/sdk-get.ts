// The hand side's download, as an operator runs one: a process of its own that gets one
// object with a plain AWS SDK v3 client and writes it to a file. With --sha256 it also
// hashes the bytes as they pass and prints the hex digest.
//   node --import tsx bench/sdk-get.ts --bucket B --key K --out FILE [--sha256]
// S3_ENDPOINT, S3_CA_FILE, S3_KEY and S3_SECRET say where and as whom.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Agent } from 'node:https';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

const { values } = parseArgs({
  options: {
    bucket: { type: 'string' },
    key: { type: 'string' },
    out: { type: 'string' },
    sha256: { type: 'boolean', default: false },
  },
});
const client = new S3Client({
  region: 'us-east-1',
  endpoint: process.env.S3_ENDPOINT,
  forcePathStyle: true,
  credentials: { accessKeyId: process.env.S3_KEY!, secretAccessKey: process.env.S3_SECRET! },
  requestHandler: new NodeHttpHandler({
    httpsAgent: new Agent({ keepAlive: true, ca: fs.readFileSync(process.env.S3_CA_FILE!) }),
  }),
});
const res = await client.send(new GetObjectCommand({ Bucket: values.bucket, Key: values.key }));
const hash = createHash('sha256');
const tap = new PassThrough();
if (values.sha256) tap.on('data', (c: Buffer) => hash.update(c));
await pipeline(res.Body as Readable, tap, fs.createWriteStream(values.out!));
if (values.sha256) console.log(hash.digest('hex'));
client.destroy();
