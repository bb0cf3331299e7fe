// Node 24 LTS, with Node 22 still supported: package.json, the image and CI agree on the
// versions, and no command prints a warning on the Node running this suite (the AWS SDK's
// NodeVersionSupportWarning on Node 20, a DeprecationWarning on a newer Node).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type S3Server, startS3 } from '../../src/dev/s3.ts';
import { bucketConfig, bucketCredentials } from '../support/bucket.ts';
import { createHarness, type Harness } from '../support/harness.ts';

const root = path.resolve(import.meta.dirname, '../..');
const read = (file: string) => fs.readFileSync(path.join(root, file), 'utf8');
const pkg = JSON.parse(read('package.json')) as {
  engines: { node: string };
  scripts: Record<string, string>;
  devDependencies: Record<string, string>;
};

/** Lines Node prints for process warnings: "(node:1234) [DEP0040] DeprecationWarning: …", "(node:1234) Warning: …". */
const warningLines = (out: string) => out.split('\n').filter((l) => /\(node:\d+\)|\w+Warning\b/.test(l));

describe('Node versions', () => {
  it('engines is >=22, the type definitions are Node 24, and the suite runs on a Node the engines allow', () => {
    expect(pkg.engines.node).toBe('>=22');
    expect(pkg.devDependencies['@types/node']).toMatch(/^\^24\./);
    expect(Number(process.versions.node.split('.')[0]), process.version).toBeGreaterThanOrEqual(22);
  });

  it('the image is built on Node 24 LTS', () => {
    const from = [...read('Dockerfile').matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    expect(from).toEqual([expect.stringMatching(/^node:24-/)]);
  });

  it('.ci/run installs Node 24 and Node 22 from the npm registry: the suite on 24, the smoke run on 22', () => {
    const ci = read('.ci/run');
    expect(ci).toMatch(/npm install [^\n]*"node@\$1"/);
    expect(ci).toMatch(/^node24="\$\(node_bin 24\)"$/m);
    expect(ci).toMatch(/^node22="\$\(node_bin 22\)"$/m);
    // Each npm command runs with that Node first on PATH.
    expect(ci).toMatch(/^PATH="\$node24:\$PATH" npm ci /m);
    expect(ci).toMatch(/^PATH="\$node24:\$PATH" npm test /m);
    expect(ci).toMatch(/^PATH="\$node22:\$PATH" npm ci /m);
    expect(ci).toMatch(/^PATH="\$node22:\$PATH" npm run test:smoke /m);
    // The smoke run: the type check, the unit tests (test/unit) and this file, so 22 is checked for warnings too.
    expect(pkg.scripts['test:smoke']).toMatch(/^npm run typecheck && npm run test:unit && vitest run /);
    for (const file of pkg.scripts['test:smoke']!.split('vitest run ')[1]!.split(' ')) {
      expect(fs.existsSync(path.join(root, file)), file).toBe(true);
    }
    expect(pkg.scripts['test:smoke']).toContain('test/integration/node-versions.test.ts');
    // The downloaded Node stays out of git.
    expect(read('.gitignore').split('\n')).toContain('/.ci/node/');
  });
});

describe('no command prints a warning on this Node', () => {
  let h: Harness;
  let s3: S3Server;

  beforeAll(async () => {
    h = await createHarness('node_versions');
    s3 = await startS3(path.join(h.dir, 's3'));
    // Off-site: dumps go to the bucket (the AWS SDK's S3 client, in the worker and the server).
    h.configFile({
      objectStore: bucketConfig(s3),
    });
    Object.assign(h.env, { ...bucketCredentials(s3) });
    await h.admin.query('create table public.herd as select g as id from generate_series(1, 100) g');
  });
  afterAll(async () => {
    await h?.close();
    await s3?.stop();
  });
  afterEach(() => h.killChildren());

  it('worker and server with the bucket, enqueue --wait, status, schedules, history, jobs', async () => {
    const outputs: Record<string, string> = {};
    const run = async (args: string[]) => {
      const p = h.spawnPgmaint(args, { LOG_LEVEL: 'warn' });
      const code = await p.exited;
      outputs[args.join(' ')] = p.output();
      return { code, out: p.output() };
    };
    const worker = h.spawnPgmaint(['worker', '--queues', 'backup']);
    await worker.waitFor(/worker started/);
    const server = h.spawnPgmaint(['server']);
    await server.waitFor(/"port":\d+/);
    const port = /"port":(\d+)/.exec(server.output())![1];

    const backup = await run(['enqueue', 'backup', '--wait']);
    expect(backup.code, backup.out).toBe(0);
    expect(backup.out).toMatch(/"state": "completed"/);
    // The server reads the catalog with the bucket's client.
    const res = await fetch(`http://127.0.0.1:${port}/api/backups`, {
      headers: { authorization: `Bearer ${h.env.ADMIN_TOKEN}` },
    });
    const body = (await res.json()) as { dumps: { file: string }[] };
    expect(res.status).toBe(200);
    expect(body.dumps).toHaveLength(1);
    for (const args of [['status'], ['schedules'], ['history', '--limit', '5'], ['jobs']]) {
      const r = await run(args);
      expect(r.code, r.out).toBe(0);
    }
    for (const [p, name] of [
      [worker, 'worker'],
      [server, 'server'],
    ] as const) {
      p.child.kill('SIGTERM');
      expect(await p.exited, name).toBe(0);
      outputs[name] = p.output();
    }
    const warned = Object.entries(outputs).flatMap(([cmd, out]) => warningLines(out).map((l) => `${cmd}: ${l}`));
    expect(warned, `on Node ${process.version}`).toEqual([]);
  });
});
