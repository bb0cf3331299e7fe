// The CLI on an engineer's laptop: with PGMAINT_URL and PGMAINT_TOKEN, and nothing else
// in its environment (no DATABASE_URL, no REDIS_URL), every command goes through a
// running server's HTTP API, with that server's tokens and roles: an admin token
// enqueues and follows the run, a viewer token reads, a wrong token does nothing.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobs } from '../../jobs/index.ts';
import { startWorkers } from '../../src/cli/roles.ts';
import { selfSignedCertificate } from '../../src/dev/s3.ts';
import { COMMANDS } from '../../src/cli/commands.ts';
import { startServer } from '../../src/http/server.ts';
import { ROUTES } from '../../src/http/routes.ts';
import type { Runtime } from '../../src/runner/runtime.ts';
import { ADMIN_TOKEN, BIN, createHarness, type Harness, VIEWER_TOKEN } from '../support/harness.ts';
import { sqlProbe } from '../support/test-jobs.ts';

let h: Harness;
let rt: Runtime;
let url: string;
let port: number;
const WRONG_TOKEN = 'not-a-token-of-this-server-0123';
const closers: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  h = await createHarness('cli_remote');
  // The server knows a job the CLI's own catalog does not: the remote CLI asks the server.
  rt = h.runtime({ jobs: [...jobs, sqlProbe] });
  startWorkers(rt, ['noop', 'sql-probe', 'backup']);
  ({ port } = await startServer(rt, { port: 0, host: '127.0.0.1' }));
  url = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await h.close();
});

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string | undefined>): Promise<Ran> {
  const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** The laptop: the server's address and a token, and nothing that reaches Redis or PostgreSQL. */
const remote = (args: string[], token: string, extra: Record<string, string> = {}) =>
  cli(args, { PATH: process.env.PATH, PGMAINT_URL: url, PGMAINT_TOKEN: token, ...extra });

/** The database host: the direct mode, with the services' variables. */
const direct = (args: string[]) => cli(args, { ...process.env, ...h.env, LOG_LEVEL: 'warn' });

/** Every run ever enqueued on the server's noop and sql-probe queues. */
async function enqueued(): Promise<number> {
  let n = 0;
  for (const q of ['noop', 'sql-probe']) {
    const counts = await rt.queues.get(q).getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed');
    n += Object.values(counts).reduce((a, b) => a + b, 0);
  }
  return n;
}

const READS = [['status'], ['schedules'], ['history'], ['jobs'], ['backups']];

describe('pgmaint with PGMAINT_URL: through the HTTP API', () => {
  it('an admin token enqueues and follows the run (progress, then the result), with no Redis or database', async () => {
    const run = await remote(['enqueue', 'noop', '--data', '{"sleepMs": 300}', '--wait'], ADMIN_TOKEN);
    expect(run.stderr).toMatch(/^enqueued: noop job \d+\nprogress \d+%\n(progress \d+%\n)*$/);
    expect(run.stderr).toMatch(/^progress 100%$/m);
    const end = JSON.parse(run.stdout);
    expect(end).toEqual({ id: expect.any(String), state: 'completed', result: { sleptMs: 300 } });
    expect(run.code).toBe(0);
    // The server's Redis has it, as an ad-hoc run.
    const job = await rt.queues.get('noop').getJob(end.id);
    expect(job?.data.trigger).toBe('ad-hoc');

    const plain = await remote(['enqueue', 'noop'], ADMIN_TOKEN);
    expect(plain.code).toBe(0);
    expect(JSON.parse(plain.stdout)).toEqual({ id: expect.any(String), queue: 'noop', name: 'noop', existing: false });

    // A run that fails is exit 1 with its reason, as in the direct mode; the job is one only the server knows.
    const failed = await remote(
      ['enqueue', 'sql-probe', '--data', '{"scenario": "missing-relation"}', '--wait'],
      ADMIN_TOKEN,
    );
    expect(failed.code).toBe(1);
    expect(JSON.parse(failed.stdout)).toMatchObject({
      state: 'failed',
      failedReason: expect.stringMatching(/no_such_table.*42P01/),
      attemptsMade: 1,
    });
  });

  it('"backup now" from a laptop: the run, then its verified dump in `backups`, as direct mode shows it', async () => {
    await h.admin.query('create table milk (id int primary key, litres numeric); insert into milk values (1, 11.5)');
    const run = await remote(['enqueue', 'backup', '--wait'], ADMIN_TOKEN);
    expect(run.stderr).toMatch(/^progress 100%$/m);
    expect(run.code).toBe(0);
    const end = JSON.parse(run.stdout);
    expect(end).toMatchObject({ state: 'completed', result: { file: expect.any(String) } });
    const file = path.basename(end.result.file);
    const [r, d] = [await remote(['backups'], VIEWER_TOKEN), await direct(['backups'])];
    expect(r.code).toBe(0);
    const dumps = r.stdout.slice(r.stdout.indexOf('\nDumps\n'), r.stdout.indexOf('\nPartition archives\n'));
    const name = file.replace(/\./g, '\\.');
    // FINISHED, FILE, FORMAT, SIZE, ROW COUNTS, RESTORE CHECK, WHERE (its local path).
    expect(dumps).toMatch(
      new RegExp(`^[\\d-]{10} [\\d:]{8}\\s+${name}\\s+custom\\s+[\\d.]+ k?B\\s+recorded\\s+never\\s+\\S*${name}$`, 'm'),
    );
    expect(d.stdout.slice(d.stdout.indexOf('\nDumps\n'), d.stdout.indexOf('\nPartition archives\n'))).toBe(dumps);
  });

  it('prints what the direct mode prints: the same tables and the same JSON', async () => {
    for (const args of [
      ['history', '--job', 'noop', '--limit', '5'],
      ['history', '--job', 'noop', '--limit', '5', '--json'],
    ]) {
      const [r, d] = [await remote(args, VIEWER_TOKEN), await direct(args)];
      expect(r.code, args.join(' ')).toBe(0);
      expect(d.code).toBe(0);
      expect(r.stdout, args.join(' ')).toBe(d.stdout);
    }
    const history = await remote(['history', '--job', 'noop'], VIEWER_TOKEN);
    expect(history.stdout).toMatch(
      /^STARTED \(Asia\/Dhaka\)\s+JOB\s+TARGET\s+TRIGGER\s+OUTCOME\s+DURATION\s+CODE\s+ERROR$/m,
    );
    expect(history.stdout).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+noop\s+main\s+ad-hoc\s+succeeded\s/m);
    // The server's catalog: the direct mode's, and the job only that server knows.
    const [rj, dj] = [await remote(['jobs'], VIEWER_TOKEN), await direct(['jobs'])];
    expect(rj.stdout).toBe(`${dj.stdout}sql-probe                test only: runs one of a few fixed statements\n`);

    const [rs, ds] = [await remote(['schedules', '--json'], VIEWER_TOKEN), await direct(['schedules', '--json'])];
    const ids = (out: string) =>
      JSON.parse(out).schedules.map((s: { id: string; cron: string }) => `${s.id} ${s.cron}`);
    expect(ids(rs.stdout)).toEqual(ids(ds.stdout));
    // SPREAD "-": not spread.
    const row = String.raw`^backup-main-nightly\s+backup\s+main\s+0 2 \* \* \*\s+Asia/Dhaka\s+-\s+`;
    expect((await remote(['schedules'], VIEWER_TOKEN)).stdout).toMatch(
      new RegExp(String.raw`${row}[\d-]{10} 02:00:00 \+06:00\s+never run\s+-$`, 'm'),
    );
    const status = await remote(['status'], VIEWER_TOKEN);
    expect(status.stdout).toMatch(/^pgmaint status at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+06:00 \(Asia\/Dhaka\)$/m);
    expect(status.stdout).toMatch(/^noop\s+1\s+\d+\s+\d+\s+\d+\s+\d+$/m);
    const backups = await remote(['backups'], VIEWER_TOKEN);
    expect(backups.stdout).toMatch(/^Backups of target main \(engine native; times in Asia\/Dhaka\)$/m);
    expect(backups.stdout).toMatch(/^Base backups\nnone$/m);
    expect(JSON.parse((await remote(['backups', '--json'], VIEWER_TOKEN)).stdout)).toMatchObject({
      target: 'main',
      engine: 'native',
      dumps: [expect.objectContaining({ format: 'custom', rowCountsRecorded: true, restoreCheck: null })],
      newestDumpAgeSeconds: expect.any(Number),
    });
  });

  it('a viewer token reads every command, and enqueue is refused with exit 4: nothing is enqueued', async () => {
    for (const args of READS) {
      const r = await remote([...args, '--json'], VIEWER_TOKEN);
      expect(r.code, `${args} ${r.stderr}`).toBe(0);
      expect(() => JSON.parse(r.stdout)).not.toThrow();
    }
    const before = await enqueued();
    for (const args of [
      ['enqueue', 'noop'],
      ['enqueue', 'noop', '--wait'],
    ]) {
      const r = await remote(args, VIEWER_TOKEN);
      expect(r.code).toBe(4);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(
        new RegExp(
          '^pgmaint: enqueue: refused by PGMAINT_URL http://127\\.0\\.0\\.1:\\d+ ' +
            '\\(403 the viewer token is read-only\\); enqueue needs the admin token\n$',
        ),
      );
    }
    expect(await enqueued()).toBe(before);
  });

  it('a wrong token is refused by every command with exit 5, naming PGMAINT_TOKEN and not showing it', async () => {
    const before = await enqueued();
    for (const args of [...READS, ['enqueue', 'noop'], ['enqueue', 'noop', '--wait']]) {
      const r = await remote(args, WRONG_TOKEN);
      expect(r.code, args.join(' ')).toBe(5);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(
        new RegExp(
          '^pgmaint: PGMAINT_TOKEN: not accepted by PGMAINT_URL http://127\\.0\\.0\\.1:\\d+ \\(401 authentication ' +
            'required.*\\); use an admin or viewer token of that server\n$',
        ),
      );
      expect(r.stderr).not.toContain(WRONG_TOKEN);
    }
    expect(await enqueued()).toBe(before);
  });

  it('on a host with REDIS_URL and DATABASE_URL too, PGMAINT_URL decides: a wrong token enqueues nothing', async () => {
    const before = await enqueued();
    const r = await cli(['enqueue', 'noop'], {
      ...process.env,
      ...h.env,
      PGMAINT_URL: url,
      PGMAINT_TOKEN: WRONG_TOKEN,
    });
    expect(r.code).toBe(5);
    expect(await enqueued()).toBe(before);
  });

  it("the server's refusals are exit 2, one line naming the problem", async () => {
    const cases: [string[], RegExp][] = [
      [['enqueue', 'nosuch'], /^pgmaint: enqueue: unknown job "nosuch" \(known: .*sql-probe/],
      [
        ['enqueue', 'noop', '--data', '{"sleepms": 1}'],
        /^pgmaint: invalid payload: sleepms: unknown field; did you mean "sleepMs"\?/,
      ],
      // The flag, as the direct mode names it, not the query field it became.
      [['history', '--job', 'nosuch'], /^pgmaint: --job: unknown job "nosuch" \(known: /],
      [['backups', '--target', 'nosuch'], /^pgmaint: backups: unknown target "nosuch" \(known: main\)$/],
      // Refused here, before the server is asked.
      [['history', '--limit', '0'], /^pgmaint: --limit: must be a whole number from 1 to 1000 \(got "0"\)$/],
      [
        ['enqueue', 'noop', '--dryRun'],
        /^pgmaint: enqueue: unknown option --dryRun \(known: --data, --wait, --targets, --all-targets\)/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await remote(args, ADMIN_TOKEN);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim()).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      // The known names once, as the server words them.
      expect(r.stderr.split('(known: ').length, r.stderr).toBeLessThanOrEqual(2);
    }
    // As the direct mode words it, "did you mean" and all.
    const [r, d] = [await remote(['enqueue', 'bakup'], ADMIN_TOKEN), await direct(['enqueue', 'bakup'])];
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^pgmaint: enqueue: unknown job "bakup"; did you mean "backup"\? \(known: [^()]*\)\n$/);
    expect(r.stderr.replace(', sql-probe', '')).toBe(d.stderr);
  });

  it('a PGMAINT_URL with a path the server has no routes under: exit 2, naming the server root to set', async () => {
    for (const pathPart of ['/api', '/admin/queues']) {
      const r = await remote(['jobs'], VIEWER_TOKEN, { PGMAINT_URL: `${url}${pathPart}` });
      expect(r.code, pathPart).toBe(2);
      expect(r.stderr).toBe(
        `pgmaint: PGMAINT_URL ${url}${pathPart} has no route for jobs (404 for ${pathPart}/api/jobs): PGMAINT_URL ` +
          `is the address the API's /api/… paths go under; for a server at the root, set PGMAINT_URL to ${url}\n`,
      );
    }
    // A path that ends in a slash is the root.
    expect((await remote(['jobs', '--json'], VIEWER_TOKEN, { PGMAINT_URL: `${url}/` })).code).toBe(0);
  });

  it('a BACKUP_DIR the server cannot read: 503 naming BACKUP_DIR, exit 3 in both modes, not a 500', async () => {
    // A file where the directory should be: what the server (and the direct mode) cannot list.
    const file = path.join(h.dir, 'backups-is-a-file');
    fs.writeFileSync(file, 'not a directory\n');
    const odd = h.runtime({ env: { BACKUP_DIR: file } });
    const server = await startServer(odd, { port: 0, host: '127.0.0.1' });
    closers.push(() => new Promise((r) => server.server.close(r)));
    const at = `http://127.0.0.1:${server.port}`;
    const r = await remote(['backups'], VIEWER_TOKEN, { PGMAINT_URL: at });
    const expected =
      `BACKUP_DIR: cannot read ${file}/dumps/main (not a directory, ENOTDIR); BACKUP_DIR is ${file}: it must be a ` +
      'directory (or not exist yet)';
    expect(r.stderr).toBe(`pgmaint: PGMAINT_URL ${at}: ${expected} (503)\n`);
    expect(r.code).toBe(3);
    const d = await cli(['backups'], { ...process.env, ...h.env, BACKUP_DIR: file, LOG_LEVEL: 'warn' });
    expect(d.stderr).toBe(`pgmaint: ${expected}\n`);
    expect(d.code).toBe(3);
  });

  it('a server that is down, silent or not pgmaint: exit 3 or 2 naming PGMAINT_URL, in time', async () => {
    // Accepts, and never answers.
    const held: net.Socket[] = [];
    const silent = net.createServer((socket) => held.push(socket)).listen(0, '127.0.0.1');
    const page = http
      .createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html></html>'))
      .listen(0, '127.0.0.1');
    await Promise.all([silent, page].map((s) => new Promise((r) => s.once('listening', r))));
    closers.push(
      () => {
        for (const socket of held) socket.destroy();
        return new Promise((r) => silent.close(r));
      },
      () => new Promise((r) => page.close(r)),
    );
    const deadPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const at = (s: net.Server) => `http://127.0.0.1:${(s.address() as net.AddressInfo).port}`;
    const down = await remote(['status'], ADMIN_TOKEN, { PGMAINT_URL: `http://127.0.0.1:${deadPort}` });
    expect(down.code).toBe(3);
    expect(down.stderr).toMatch(
      /^pgmaint: PGMAINT_URL http:\/\/127\.0\.0\.1:\d+: cannot reach it: connect ECONNREFUSED/,
    );
    const mute = await remote(['enqueue', 'noop'], ADMIN_TOKEN, { PGMAINT_URL: at(silent), PGMAINT_TIMEOUT: '1' });
    expect(mute.code).toBe(3);
    expect(mute.stderr).toMatch(
      /^pgmaint: PGMAINT_URL http:\/\/127\.0\.0\.1:\d+: no answer within 1s \(PGMAINT_TIMEOUT\)\n$/,
    );
    const other = await remote(['jobs'], ADMIN_TOKEN, { PGMAINT_URL: at(page) });
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/answered 200 with text\/html, not pgmaint's JSON: is it the pgmaint server\?/);
  });

  it('settings that cannot work are refused with exit 2 before anything is sent', async () => {
    const cases: [Record<string, string | undefined>, string[], RegExp][] = [
      [{ PGMAINT_TOKEN: undefined }, ['status'], /^pgmaint: PGMAINT_TOKEN: is required with PGMAINT_URL/],
      [
        { PGMAINT_URL: 'ftp://example.com' },
        ['status'],
        /^pgmaint: PGMAINT_URL: must start with https:\/\/ or http:\/\//,
      ],
      [{ PGMAINT_URL: 'http://u:p@example.com' }, ['status'], /^pgmaint: PGMAINT_URL: must not carry credentials/],
      [{ PGMAINT_URL: undefined }, ['status'], /^pgmaint: PGMAINT_TOKEN: is set but PGMAINT_URL is not/],
      [{ PGMAINT_CA_FILE: '/etc/hostname' }, ['status'], /^pgmaint: PGMAINT_CA_FILE: applies to https:\/\/ only/],
      [{ PGMAINT_TIMEOUT: '0' }, ['status'], /^pgmaint: PGMAINT_TIMEOUT: must be whole seconds from 1 to 600/],
      [{ PGMAINT_TOKEN: `${ADMIN_TOKEN}\n` }, ['status'], /^pgmaint: PGMAINT_TOKEN: must be printable ASCII/],
      [{}, ['worker'], /^pgmaint: worker: runs on this machine only, not through PGMAINT_URL/],
      [{}, ['seed'], /^pgmaint: seed: runs on this machine only/],
    ];
    for (const [env, args, message] of cases) {
      const r = await cli(args, { PATH: process.env.PATH, PGMAINT_URL: url, PGMAINT_TOKEN: ADMIN_TOKEN, ...env });
      expect(r.code, JSON.stringify(env)).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toContain(ADMIN_TOKEN);
    }
  });

  it('https:// with PGMAINT_CA_FILE: the CA of a self-signed certificate is trusted, and only with it', async () => {
    const { key, cert } = certificate('localhost', 'IP:127.0.0.1,DNS:localhost');
    // TLS ends at a proxy in front of the server, as in a deployment.
    const proxy = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (req, res) => {
      const upstream = http.request(
        { host: '127.0.0.1', port, path: req.url, method: req.method, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      req.pipe(upstream);
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => proxy.close(r)));
    const tls = `https://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    const trusted = await remote(['enqueue', 'noop', '--wait'], ADMIN_TOKEN, {
      PGMAINT_URL: tls,
      PGMAINT_CA_FILE: cert,
    });
    expect(trusted.stderr).toMatch(/^enqueued: noop job \d+$/m);
    expect(JSON.parse(trusted.stdout)).toMatchObject({ state: 'completed', result: { sleptMs: 0 } });
    expect(trusted.code).toBe(0);
    const untrusted = await remote(['status'], ADMIN_TOKEN, { PGMAINT_URL: tls });
    expect(untrusted.code).toBe(2);
    expect(untrusted.stderr).toMatch(
      new RegExp(
        '^pgmaint: PGMAINT_URL https://127\\.0\\.0\\.1:\\d+: its TLS certificate is not trusted here ' +
          '\\(self[- ]signed certificate\\); PGMAINT_CA_FILE names the CA that signed it\n$',
      ),
    );
    const viewer = await remote(['enqueue', 'noop'], VIEWER_TOKEN, { PGMAINT_URL: tls, PGMAINT_CA_FILE: cert });
    expect(viewer.code).toBe(4);
  });
});

/** An HTTP server of the test's own on loopback, answering with `handler`; closed after the file. */
async function fakeServer(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

/** A self-signed certificate (its own CA) for these subject alternative names. */
function certificate(name: string, altNames: string): { key: string; cert: string } {
  return selfSignedCertificate(path.join(h.dir, `tls-${name}`), name, altNames);
}

/** Control characters a terminal acts on (ESC, BEL, CSI, …): none may reach it from a server. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding them is the point.
const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

describe('what answers at PGMAINT_URL is not pgmaint, or not pgmaint of this setting', () => {
  it('a web page, a redirect, a proxy error page: exit 2 (3 for a proxy), saying what answered', async () => {
    const page = await fakeServer((_req, res) =>
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><h1>Not Found</h1></html>'),
    );
    const notFound = await remote(['status'], VIEWER_TOKEN, { PGMAINT_URL: page });
    expect(notFound.code).toBe(2);
    expect(notFound.stderr).toBe(
      `pgmaint: PGMAINT_URL ${page} answered 404 with text/html, not pgmaint's JSON: is it the pgmaint server?\n`,
    );
    // http:// to https:// on another port, as a TLS proxy sends plain-HTTP clients along.
    const moved = await fakeServer((req, res) =>
      res.writeHead(301, { location: `https://127.0.0.1:8443${req.url}` }).end(),
    );
    const redirect = await remote(['history', '--limit', '3'], VIEWER_TOKEN, { PGMAINT_URL: moved });
    expect(redirect.code).toBe(2);
    expect(redirect.stderr).toBe(
      `pgmaint: PGMAINT_URL ${moved} answered 301, redirecting to https://127.0.0.1:8443/api/history: set ` +
        'PGMAINT_URL to https://127.0.0.1:8443\n',
    );
    const login = await fakeServer((_req, res) => res.writeHead(302, { location: '/sso/login?next=x' }).end());
    const sso = await remote(['jobs'], VIEWER_TOKEN, { PGMAINT_URL: login });
    expect(sso.code).toBe(2);
    expect(sso.stderr).toBe(
      `pgmaint: PGMAINT_URL ${login} answered 302, redirecting to ${login}/sso/login, which is not pgmaint's API: ` +
        "set PGMAINT_URL to the pgmaint server's address\n",
    );
    const proxy = await fakeServer((_req, res) =>
      res.writeHead(502, { 'content-type': 'text/html' }).end('<html>Bad Gateway</html>'),
    );
    const badGateway = await remote(['status'], VIEWER_TOKEN, { PGMAINT_URL: proxy });
    expect(badGateway.code).toBe(3);
    expect(badGateway.stderr).toMatch(
      /^pgmaint: PGMAINT_URL http:\S+ answered 502 with text\/html, not pgmaint's JSON/,
    );
  });

  it('https:// to a certificate for another name, and to a plain-HTTP port: exit 2 saying which', async () => {
    const { key, cert } = certificate('elsewhere', 'DNS:pgmaint.example.com,IP:10.9.8.7');
    const tls = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (_req, res) =>
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"jobs": []}'),
    );
    await new Promise<void>((r) => tls.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => tls.close(r)));
    const tlsUrl = `https://127.0.0.1:${(tls.address() as net.AddressInfo).port}`;
    const mismatch = await remote(['jobs'], VIEWER_TOKEN, { PGMAINT_URL: tlsUrl, PGMAINT_CA_FILE: cert });
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr).toBe(
      `pgmaint: PGMAINT_URL ${tlsUrl}: its TLS certificate is for DNS:pgmaint.example.com, IP Address:10.9.8.7, not ` +
        '127.0.0.1 (the certificate is trusted, the name does not match); set PGMAINT_URL to a name the ' +
        'certificate holds\n',
    );
    expect(mismatch.stderr).not.toMatch(/PGMAINT_CA_FILE names the CA/);
    // The pgmaint server itself speaks plain HTTP.
    const plain = url.replace('http:', 'https:');
    const notTls = await remote(['status'], VIEWER_TOKEN, { PGMAINT_URL: plain });
    expect(notTls.code).toBe(2);
    expect(notTls.stderr).toBe(
      `pgmaint: PGMAINT_URL ${plain}: does not speak TLS on that port (it answered in plain text); for a plain ` +
        `HTTP server, set PGMAINT_URL to ${url}\n`,
    );
  });

  it("a server's words reach the terminal with their control characters escaped", async () => {
    const evil = '\u001b[31mred\u001b]0;title\u0007\u009b2J\r';
    const server = await fakeServer((req, res) => {
      const json = (status: number, body: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      if (req.url === '/api/status') return json(400, { error: `refused ${evil}` });
      if (req.url === '/api/jobs')
        return json(200, { jobs: [{ name: `noop${evil}`, description: evil, defaults: {} }] });
      if (req.method === 'POST') return json(202, { id: `1${evil}`, queue: 'noop', name: 'noop', existing: false });
      return json(200, {
        state: 'completed',
        progress: evil,
        result: { said: evil },
        failedReason: null,
        attemptsMade: 1,
      });
    });
    const refused = await remote(['status'], VIEWER_TOKEN, { PGMAINT_URL: server });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe('pgmaint: refused \\u001b[31mred\\u001b]0;title\\u0007\\u009b2J\\u000d\n');
    const table = await remote(['jobs'], VIEWER_TOKEN, { PGMAINT_URL: server });
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^noop\\u001b\[31mred/m);
    const asJson = await remote(['jobs', '--json'], VIEWER_TOKEN, { PGMAINT_URL: server });
    expect(JSON.parse(asJson.stdout).jobs[0].description).toBe(evil);
    const followed = await remote(['enqueue', 'noop', '--wait'], ADMIN_TOKEN, { PGMAINT_URL: server });
    expect(followed.code).toBe(0);
    expect(followed.stderr).toMatch(/^enqueued: noop job 1\\u001b\[31mred/m);
    expect(followed.stderr).toMatch(/^progress "\\u001b\[31mred\\u001b\]0;title\\u0007\\u009b2J\\r"%$/m);
    expect(JSON.parse(followed.stdout).result.said).toBe(evil);
    for (const r of [refused, table, asJson, followed]) expect(`${r.stdout}${r.stderr}`).not.toMatch(RAW_CONTROL);
  });
});

describe('the reader of the output goes away', () => {
  it('`pgmaint jobs --json | head -c 5`: the closed pipe ends it quietly, exit 0, no stack trace', async () => {
    // An answer far bigger than a pipe holds, so the writes meet the closed pipe.
    const jobs = Array.from({ length: 5000 }, (_, i) => ({
      name: `job-${i}`,
      description: 'x'.repeat(200),
      defaults: {},
    }));
    const big = await fakeServer((_req, res) =>
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jobs })),
    );
    for (const args of [['jobs', '--json'], ['jobs']]) {
      const child = spawn(process.execPath, [BIN, ...args], {
        env: { PATH: process.env.PATH, PGMAINT_URL: big, PGMAINT_TOKEN: VIEWER_TOKEN },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.once('data', () => child.stdout.destroy());
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(stderr, args.join(' ')).toBe('');
      expect(code).toBe(0);
    }
  });
});

describe('enqueue in remote mode: refusals before sending, the rate limit, a server that stops answering', () => {
  it('--data too deep, too big or not an object: exit 2, the same refusal as the direct mode', async () => {
    let deep = '1';
    for (let i = 0; i < 5000; i++) deep = `{"a":${deep}}`;
    const [r, d] = [
      await remote(['enqueue', 'noop', '--data', deep], ADMIN_TOKEN),
      await direct(['enqueue', 'noop', '--data', deep]),
    ];
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('pgmaint: --data: nested more than 32 levels deep; a payload is a flat JSON object\n');
    expect(d.code).toBe(2);
    expect(d.stderr).toBe(r.stderr);
    // Valid JSON that is no payload: the same refusal here, not the server's words about a request body.
    for (const data of ['null', '"x"', '[1]']) {
      const [rn, dn] = [
        await remote(['enqueue', 'noop', '--data', data], ADMIN_TOKEN),
        await direct(['enqueue', 'noop', '--data', data]),
      ];
      expect(rn.code, data).toBe(2);
      expect(rn.stderr).toMatch(/^pgmaint: --data: must be a JSON object of the job's fields, e\.g\. .* \(got /);
      expect(dn.code, data).toBe(2);
      expect(dn.stderr).toBe(rn.stderr);
    }
    const big = JSON.stringify({ sleepMs: 0, pad: 'x'.repeat(70_000) });
    const tooBig = await remote(['enqueue', 'noop', '--data', big], ADMIN_TOKEN);
    expect(tooBig.code).toBe(2);
    expect(tooBig.stderr).toMatch(/^pgmaint: --data: 70\d{3} bytes; a payload may have at most 65536 \(64 kB\)\n$/);
  });

  it('the rate limit (429): exit 3, "too many enqueue requests"; nothing more is enqueued', async () => {
    const limited = await startServer(rt, { port: 0, host: '127.0.0.1', enqueueRateLimit: 1 });
    closers.push(() => new Promise((r) => limited.server.close(r)));
    const at = `http://127.0.0.1:${limited.port}`;
    expect((await remote(['enqueue', 'noop'], ADMIN_TOKEN, { PGMAINT_URL: at })).code).toBe(0);
    const before = await enqueued();
    const second = await remote(['enqueue', 'noop'], ADMIN_TOKEN, { PGMAINT_URL: at });
    expect(second.code).toBe(3);
    expect(second.stderr).toBe(`pgmaint: PGMAINT_URL ${at}: too many enqueue requests: try again in a minute (429)\n`);
    expect(await enqueued()).toBe(before);
  });

  it('Ctrl-C during --wait stops the following, says the run goes on, exit 130; the run completes', async () => {
    const child = spawn(process.execPath, [BIN, 'enqueue', 'noop', '--data', '{"sleepMs": 3000}', '--wait'], {
      env: { PATH: process.env.PATH, PGMAINT_URL: url, PGMAINT_TOKEN: ADMIN_TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const following = new Promise<string>((resolve) =>
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        // Past the enqueue: its first progress line comes from the follow.
        const id = /^enqueued: noop job (\d+)\nprogress /m.exec(stderr)?.[1];
        if (id) resolve(id);
      }),
    );
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const id = await following;
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stderr).toMatch(
      new RegExp(
        `\npgmaint: stopped following; noop job ${id} was enqueued and may still run; pgmaint history --job noop ` +
          'shows how it ends\n$',
      ),
    );
    const queue = rt.queues.get('noop');
    let state = await queue.getJobState(id);
    while (state === 'waiting' || state === 'active') {
      await sleep(200);
      state = await queue.getJobState(id);
    }
    expect(state).toBe('completed');
    expect((await queue.getJob(id))?.returnvalue).toEqual({ sleptMs: 3000 });
  });

  it('--wait with the server stopped (SIGSTOP) mid-follow: gives up after 30 s, exit 3, naming the job', async () => {
    const server = h.spawnPgmaint(['server'], { HOST: '127.0.0.1', PORT: '0' });
    await server.waitFor(/server listening/, 30_000);
    const line = server
      .output()
      .split('\n')
      .find((l) => l.includes('server listening'))!;
    const at = `http://127.0.0.1:${JSON.parse(line).port}`;
    // A job no worker of this file takes: it waits, and the CLI follows it. With 3 s per request and 2 s
    // between, the last pause would end on the 30 s: no request may then be made with no time left.
    const child = spawn(process.execPath, [BIN, 'enqueue', 'index-report', '--wait'], {
      env: { PATH: process.env.PATH, PGMAINT_URL: at, PGMAINT_TOKEN: ADMIN_TOKEN, PGMAINT_TIMEOUT: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const enqueuedLine = new Promise<string>((resolve) =>
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const id = /^enqueued: index-report job (\d+)$/m.exec(stderr)?.[1];
        if (id) resolve(id);
      }),
    );
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    try {
      const id = await enqueuedLine;
      process.kill(server.child.pid!, 'SIGSTOP');
      // Well past the 30 s it may wait; the old count of 15 retries took 15 × (3 + 2) s.
      const code = await Promise.race([exited, sleep(60_000).then(() => 'still following')]);
      expect(code, stderr).toBe(3);
      expect(stderr).toMatch(
        new RegExp(
          `^pgmaint: PGMAINT_URL ${at}: no answer within \\d+s( \\(PGMAINT_TIMEOUT\\))?; gave up following the run ` +
            `after 30 s without an answer: index-report job ${id} was enqueued and may still run; pgmaint history ` +
            '--job index-report shows how it ends\n$',
          'm',
        ),
      );
    } finally {
      child.kill('SIGKILL');
      process.kill(server.child.pid!, 'SIGCONT');
      await server.killGroup();
    }
  });
});

describe('the command table', () => {
  it('--help is generated from it: every command, both modes, the exit codes', async () => {
    const help = await cli(['--help'], { PATH: process.env.PATH });
    expect(help.code).toBe(0);
    for (const c of COMMANDS) expect(help.stdout).toMatch(new RegExp(`^  pgmaint ${c.name}\\b`, 'm'));
    expect(help.stdout).toMatch(/^Remote mode, e\.g\. on an engineer's laptop: PGMAINT_URL=/m);
    expect(help.stdout).toMatch(/BYPASSES the API's tokens, roles and rate limit/);
    expect(help.stdout).toMatch(/4 the token may not\s+do\s+this .*5 the server did not accept the token/s);
    const one = await cli(['backups', '--help'], { PATH: process.env.PATH });
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(/^Usage: pgmaint backups \[--target NAME\] \[--json\]$/m);
    expect(one.stdout).toMatch(
      /^Remote \(PGMAINT_URL\): GET \/api\/backups with PGMAINT_TOKEN, a viewer or admin token\.$/m,
    );
  });

  it("each API command's route is in ROUTES with the access its help promises", () => {
    for (const c of COMMANDS) {
      if (c.mode !== 'api') continue;
      const route = ROUTES.find((r) => r.method === c.route.method.toLowerCase() && r.path === c.route.path);
      expect(route?.access, c.name).toBe(c.route.token === 'admin' ? 'write' : 'read');
    }
  });
});
