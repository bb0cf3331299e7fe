// The CLI as a person or a script meets it: every refusal is one line on stderr and
// exit 2 (3 when Redis or PostgreSQL does not answer), never a stack trace; long-running
// roles say within seconds which service they cannot reach, and keep saying it.
import net from 'node:net';
import os from 'node:os';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runProcess } from '../../src/core/proc.ts';
import { createHarness, type Harness } from '../support/harness.ts';

let h: Harness;
let deadPort: number;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  h = await createHarness('cli_errors');
  h.configFile({ partitions: [{ table: 'app.events', column: 'ts', interval: 'day', retention: '30 days' }] });
  deadPort = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
});
afterAll(async () => {
  await h.close();
  for (const fn of cleanups) await fn();
});
afterEach(() => h.killChildren());

async function refused(args: string[], env: Record<string, string> = {}) {
  const p = h.spawnPgmaint(args, env);
  const code = await p.exited;
  const out = p.output().trim();
  return { code, out };
}

describe('CLI refusals', () => {
  it.each([
    [['history', '--limit', 'abc'], /^pgmaint: --limit: must be a whole number from 1 to 1000 \(got "abc"\)$/],
    [['history', '--job', 'nosuch'], /^pgmaint: --job: unknown job "nosuch" \(known: .*noop/],
    [['worker', '--queues', 'nosuch'], /^pgmaint: --queues: unknown job "nosuch" \(known: /],
    [
      ['enqueue', 'drop-expired-partitions', '--dryRun'],
      /^pgmaint: enqueue: unknown option --dryRun \(known: --data, --wait, --targets, --all-targets\); payload fields/,
    ],
    [
      ['enqueue', 'drop-expired-partitions', '--data', '{"dryrun":true}'],
      /^pgmaint: invalid payload: dryrun: unknown field; did you mean "dryRun"\?/,
    ],
    [
      ['enqueue', 'drop-expired-partitions', '--data', '{"tables":["app.nosuch"]}'],
      /^pgmaint: invalid payload: tables\.0: no partition policy with a retention for app\.nosuch/,
    ],
    [['enqueue', 'noop', '--data', '{"sleepMs":'], /^pgmaint: --data: not valid JSON/],
    // Valid JSON, but no payload: never taken as {} in silence.
    [
      ['enqueue', 'noop', '--data', 'null'],
      /^pgmaint: --data: must be a JSON object of the job's fields, e\.g\. '\{"target": "main"\}' \(got null\)$/,
    ],
    [['enqueue', 'noop', '--data', '"x"'], /^pgmaint: --data: must be a JSON object .* \(got a string\)$/],
    // The last of a repeated option is not taken in silence.
    [
      ['enqueue', 'noop', '--data', '{"sleepMs": 1}', '--data', '{"sleepMs": 2}'],
      /^pgmaint: --data: given more than once \(enqueue takes one\)$/,
    ],
    [['history', '--limit', '5', '--limit', '6'], /^pgmaint: --limit: given more than once \(history takes one\)$/],
    [['enqueue', 'nosuch'], /^pgmaint: enqueue: unknown job "nosuch" \(known: /],
    [['enqueue', 'bakup'], /^pgmaint: enqueue: unknown job "bakup"; did you mean "backup"\? \(known: /],
    [
      ['history', '--job', 'vacum-analyze'],
      /^pgmaint: --job: unknown job "vacum-analyze"; did you mean "vacuum-analyze"\?/,
    ],
    [
      ['worker', '--queues', 'archive-chek'],
      /^pgmaint: --queues: unknown job "archive-chek"; did you mean "archive-check"\?/,
    ],
    [['frobnicate'], /^pgmaint: unknown command "frobnicate"/],
    [['help', 'enqeue'], /^pgmaint: unknown command "enqeue" \(commands: enqueue, /],
    [
      ['enqueue', 'noop', '--json'],
      new RegExp(
        '^pgmaint: enqueue: unknown option --json \\(known: --data, --wait, --targets, --all-targets\\); ' +
          'enqueue prints its answer as JSON on stdout',
      ),
    ],
    [['schedules', 'extra'], /^pgmaint: schedules: takes no arguments/],
  ])('%j exits 2 with one line naming the problem', async (args, message) => {
    const { code, out } = await refused(args);
    expect(code).toBe(2);
    expect(out).toMatch(message);
    expect(out.split('\n')).toHaveLength(1);
  });

  it('enqueue with Redis unreachable exits 3, naming REDIS_URL, within seconds', async () => {
    const started = Date.now();
    const { code, out } = await refused(['enqueue', 'noop'], { REDIS_URL: `redis://127.0.0.1:${deadPort}` });
    expect(code).toBe(3);
    expect(out).toMatch(new RegExp(`^pgmaint: REDIS_URL: cannot reach redis://127\\.0\\.0\\.1:${deadPort}: `));
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('server without ADMIN_TOKEN refuses at once, exit 2, before it asks Redis or PostgreSQL anything', async () => {
    const p = h.spawnPgmaint(['server'], {
      ADMIN_TOKEN: '',
      REDIS_URL: `redis://127.0.0.1:${deadPort}`,
      DATABASE_URL: `postgres://pgmaint@127.0.0.1:${deadPort}/dairy`,
    });
    // A server that waits for its services says so within seconds: that is the failure this rules out.
    const outcome = await Promise.race([p.exited, p.waitFor(/cannot reach/, 30_000).then(() => 'waited for services')]);
    expect(outcome).toBe(2);
    expect(p.output().trim()).toMatch(/^pgmaint: ADMIN_TOKEN: required for the server \(at least 16 characters\)/);
    expect(p.output().trim().split('\n')).toHaveLength(1);
  });

  it('seed with its database unreachable exits 3, naming DATABASE_URL', async () => {
    const { code, out } = await refused(['seed', '--scale', 'small'], {
      DATABASE_URL: `postgres://pgmaint:secret@127.0.0.1:${deadPort}/dairy`,
    });
    expect(code).toBe(3);
    expect(out).toMatch(
      new RegExp(
        `^pgmaint: DATABASE_URL: cannot reach PostgreSQL at postgres://pgmaint:\\*{3}@127\\.0\\.0\\.1:` +
          `${deadPort}/dairy: `,
      ),
    );
    expect(out).not.toContain('secret');
  });

  it('a refusal is exit 2 even with the services away; a history read without its database is exit 3', async () => {
    const noRedis = { REDIS_URL: `redis://127.0.0.1:${deadPort}` };
    const bad = await refused(['enqueue', 'noop', '--data', '{"dryrun": true}'], noRedis);
    expect(bad.code).toBe(2);
    expect(bad.out).toMatch(/^pgmaint: invalid payload: dryrun: unknown field/);
    expect((await refused(['enqueue', 'nosuch'], noRedis)).code).toBe(2);
    const noDb = { DATABASE_URL: `postgres://pgmaint@127.0.0.1:${deadPort}/dairy` };
    expect((await refused(['history', '--job', 'nosuch'], noDb)).code).toBe(2);
    const history = await refused(['history'], noDb);
    expect(history.code).toBe(3);
    expect(history.out).toMatch(/^pgmaint: DATABASE_URL: cannot reach PostgreSQL at /);
    expect((await refused(['schedules', '--json'], noDb)).code).toBe(3);
  });
});

describe('long-running roles never wait in silence', () => {
  it('a worker whose Redis is unreachable says so within 5 s, naming REDIS_URL, and logs each retry', async () => {
    const p = h.spawnPgmaint(['worker'], { REDIS_URL: `redis://127.0.0.1:${deadPort}` });
    await p.waitFor(/REDIS_URL: cannot reach .*retrying in 1s/, 8000);
    await p.waitFor(/REDIS_URL: cannot reach .*retrying in 2s/, 10_000);
  });

  it('a server whose PostgreSQL is unreachable says so within 5 s, naming DATABASE_URL', async () => {
    const p = h.spawnPgmaint(['server'], { DATABASE_URL: `postgres://pgmaint@127.0.0.1:${deadPort}/dairy` });
    await p.waitFor(
      /DATABASE_URL: cannot reach PostgreSQL at postgres:\/\/pgmaint@127\.0\.0\.1:\d+\/dairy \(target main\).*retrying/,
      8000,
    );
  });

  it('the server binds only the address in HOST: another address of this machine is refused', async () => {
    const outside = await nonLoopbackAddress();
    const local = h.spawnPgmaint(['server'], { HOST: '127.0.0.1', PORT: '0' });
    await local.waitFor(/server listening/, 20_000);
    const { host, port } = listening(local.output());
    expect(host).toBe('127.0.0.1');
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    expect(await connectTo(outside, port)).toBe('ECONNREFUSED');
    await local.killGroup();
    // The same address reaches a server bound to every interface: the refusal above is HOST's doing.
    const every = h.spawnPgmaint(['server'], { HOST: '0.0.0.0', PORT: '0' });
    await every.waitFor(/server listening/, 20_000);
    const all = listening(every.output());
    expect(all.host).toBe('0.0.0.0');
    expect(await connectTo(outside, all.port)).toBe('connected');
  });

  it('HOST that is not an IP address is refused at start: exit 2, naming HOST', async () => {
    const { code, out } = await refused(['server'], { HOST: 'not-an-ip' });
    expect(code).toBe(2);
    expect(out).toMatch(/^pgmaint: environment: HOST: must be an IP address to listen on, .*\(got "not-an-ip"\)$/);
    expect(out.split('\n')).toHaveLength(1);
  }, 30_000);
});

/** The host and port of a server's "server listening" log line. */
function listening(output: string): { host: string; port: number } {
  return JSON.parse(output.split('\n').find((l) => l.includes('server listening'))!);
}

/** Whether a TCP connection to address:port is accepted ("connected") or refused (the error code). */
function connectTo(address: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: address, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/**
 * An IPv4 address of this machine that is not loopback. A machine with none gets one for
 * the test, on a dummy interface (as root), removed when the file ends.
 */
async function nonLoopbackAddress(): Promise<string> {
  const found = Object.values(os.networkInterfaces())
    .flat()
    .find((a) => a && a.family === 'IPv4' && !a.internal);
  if (found) return found.address;
  await runProcess('ip', ['link', 'add', 'pgmtest', 'type', 'dummy']);
  cleanups.push(() => runProcess('ip', ['link', 'del', 'pgmtest']).then(() => undefined));
  await runProcess('ip', ['addr', 'add', '10.213.0.1/32', 'dev', 'pgmtest']);
  await runProcess('ip', ['link', 'set', 'pgmtest', 'up']);
  return '10.213.0.1';
}
