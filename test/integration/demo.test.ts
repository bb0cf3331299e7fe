// `pgmaint demo` as a person starts it: a taken port is named before anything starts,
// port 3000 taken means another port, the banner is the last thing on the screen,
// and Ctrl-C leaves no PostgreSQL or Redis behind, even with archiving hung. A killed
// demo's servers are stopped at the next start, a second demo in the same directory is
// refused, and PGMAINT_CONFIG is laid over the demo's configuration.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresUser } from '../../src/core/local-postgres.ts';
import { startPostgres } from '../../src/dev/devstack.ts';
import { createHarness, type Harness, waitUntil } from '../support/harness.ts';
import { stopLeftovers } from '../support/leftovers.ts';

let h: Harness;
beforeAll(async () => {
  h = await createHarness('demo');
});
afterAll(async () => {
  await h.close();
  stopLeftovers(
    [
      ...['demo-free', 'demo-bad-config', 'demo-leftovers'].map((d) => path.join(h.dir, d, 'pg/data')),
      path.join(h.dir, 'stale/data'),
    ],
    [path.join(h.dir, 'demo-leftovers/redis')],
  );
});

/** Listens on a port (0: any) until closed. */
async function occupy(port: number): Promise<net.Server | undefined> {
  const srv = net.createServer();
  return new Promise((resolve) => {
    srv.once('error', () => resolve(undefined));
    srv.listen(port, '0.0.0.0', () => resolve(srv));
  });
}

/** Whether something answers on this loopback port. */
const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const sock = net.connect(port, '127.0.0.1', () => {
      sock.destroy();
      resolve(true);
    });
    sock.on('error', () => resolve(false));
  });

const processesUnder = (dir: string) =>
  execFileSync('ps', ['-eo', 'args'])
    .toString()
    .split('\n')
    .filter((l) => l.includes(dir));

const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The environment a demo wrote to its env.sh. */
const demoEnv = (dir: string) =>
  Object.fromEntries(
    [...fs.readFileSync(path.join(dir, 'env.sh'), 'utf8').matchAll(/^export (\w+)='(.*)'$/gm)].map((m) => [
      m[1]!,
      m[2]!,
    ]),
  );

async function sql(url: string, text: string): Promise<Record<string, unknown>[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

/** Hangs the demo's WAL archiving, as an archive-push to a bucket that is gone does, and waits until it hangs. */
async function hangArchiving(url: string, dir: string): Promise<void> {
  await sql(url, `alter system set archive_command = 'sleep 600; false ${dir}'`);
  await sql(url, 'select pg_reload_conf()');
  await sql(url, 'create table if not exists public.filler as select 1 as x');
  await sql(url, 'insert into public.filler select 1');
  await sql(url, 'select pg_switch_wal()');
  await waitUntil(
    async () => processesUnder(dir).some((l) => l.includes('sleep 600')),
    30_000,
    'the archiver to hang in its archive_command',
  );
}

describe('pgmaint demo', () => {
  it('a PORT that is taken is refused, naming it, before any server starts', async () => {
    const blocker = (await occupy(0))!;
    const port = (blocker.address() as net.AddressInfo).port;
    const dir = path.join(h.dir, 'demo-taken');
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: String(port) });
    expect(await demo.exited).toBe(2);
    expect(demo.output()).toMatch(
      new RegExp(`^pgmaint: PORT: ${port} is already in use on 0\\.0\\.0\\.0; choose`, 'm'),
    );
    expect(processesUnder(dir)).toEqual([]);
    blocker.close();
  });

  it('with port 3000 taken it takes a free port, prints the banner last, and Ctrl-C stops everything', async () => {
    // Whoever holds 3000 (this test, or something else on the machine), the demo must not fail on it.
    const blocker = await occupy(3000);
    const dir = path.join(h.dir, 'demo-free');
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '', LOG_LEVEL: '' });
    try {
      await demo.waitFor(/Ctrl-C stops everything/, 120_000);
      expect(demo.output()).toMatch(/^port 3000 is in use; the demo listens on \d+ instead/m);
      const url = /Bull Board: (http:\/\/\S+)\/admin\/queues/.exec(demo.output())![1]!;
      expect(url).not.toMatch(/:3000$/);
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      // Schedules sync, workers start, jobs may run: nothing is logged under the banner at the default level.
      await sleep(2000);
      expect(demo.output().trimEnd()).toMatch(/Ctrl-C stops everything\.$/);
      demo.child.kill('SIGINT');
      expect(await demo.exited).toBe(0);
      expect(processesUnder(dir)).toEqual([]);
    } finally {
      blocker?.close();
      await demo.killGroup();
    }
  }, 180_000);

  it('a PGMAINT_CONFIG with a mistake is refused, naming it, before any server starts', async () => {
    const bad = path.join(h.dir, 'bad.yaml');
    fs.writeFileSync(bad, 'schedules:\n  - { id: backup-main-nightly, cron: "0 0 2 * * *" }\n');
    const dir = path.join(h.dir, 'demo-bad-config');
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '0', PGMAINT_CONFIG: bad });
    try {
      const outcome = await Promise.race([demo.exited, demo.waitFor(/pgmaint demo is up/, 120_000).then(() => 'up')]);
      expect(outcome).toBe(2);
      expect(demo.output().trim()).toMatch(
        /^pgmaint: demo: PGMAINT_CONFIG is laid over the demo's .*docker\/pgmaint\.yaml: schedules\.0\.cron: /,
      );
      expect(processesUnder(dir)).toEqual([]);
    } finally {
      await demo.killGroup();
    }
  }, 180_000);

  it('a stale postmaster.pid (its PID now another process) is removed, and the cluster starts', async () => {
    const dir = path.join(h.dir, 'stale');
    const cluster = await startPostgres({ dir });
    await cluster.stop();
    // After a reboot the PID in the file may belong to anything: here, a process of the server's
    // own OS user that shrugs off pg_ctl's stop signals.
    const decoy = spawn('sh', ['-c', 'trap "" INT TERM QUIT; exec sleep 600'], {
      stdio: 'ignore',
      ...postgresUser(),
    });
    const pidFile = path.join(cluster.dataDir, 'postmaster.pid');
    fs.writeFileSync(pidFile, `${decoy.pid}\n${cluster.dataDir}\n`);
    const logged: string[] = [];
    try {
      const again = await startPostgres({ dir, log: (m) => logged.push(m) });
      expect(await sql(again.url(), 'select 1 as one')).toEqual([{ one: 1 }]);
      expect(logged).toEqual([`removing a stale ${pidFile} (PID ${decoy.pid} is no PostgreSQL of this directory)`]);
      expect(decoy.exitCode).toBeNull();
      await again.stop();
      expect(fs.existsSync(pidFile)).toBe(false);
    } finally {
      decoy.kill('SIGKILL');
    }
  }, 150_000);

  it("a killed demo's servers are stopped at the next start, a second demo in that directory is refused, and " +
    'Ctrl-C stops everything even with archiving hung', async () => {
    const dir = path.join(h.dir, 'demo-leftovers');
    const first = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '0', LOG_LEVEL: 'warn' });
    await first.waitFor(/Ctrl-C stops everything/, 120_000);
    const firstEnv = demoEnv(dir);
    await hangArchiving(firstEnv.DATABASE_URL!, dir);
    // The demo alone: its PostgreSQL (a session of its own) and its Redis stay behind.
    first.child.kill('SIGKILL');
    await first.exited;
    expect(processesUnder(dir).some((l) => l.includes(`postgres -D ${dir}/pg/data`))).toBe(true);
    const firstRedisPort = Number(new URL(firstEnv.REDIS_URL!).port);
    expect(await listening(firstRedisPort)).toBe(true);

    const extra = path.join(h.dir, 'extra.yaml');
    fs.writeFileSync(
      extra,
      `redis: { prefix: "{t-${h.id}}" }\nschedules:\n  - { id: backup-main-nightly, cron: "45 1 * * *" }\n`,
    );
    const demo = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], {
      PORT: '0',
      LOG_LEVEL: 'warn',
      PGMAINT_CONFIG: extra,
    });
    try {
      await demo.waitFor(/Ctrl-C stops everything/, 180_000);
      expect(demo.output()).toMatch(
        new RegExp(
          `^stopping the PostgreSQL an earlier run left running in ${reEscape(dir)}/pg/data \\(PID \\d+\\)$`,
          'm',
        ),
      );
      expect(await listening(firstRedisPort)).toBe(false);
      const env = demoEnv(dir);
      // What ALTER SYSTEM set is gone: the demo's own local archive_command again.
      const archive = path.join(dir, 'pg/wal-archive');
      expect(await sql(env.DATABASE_URL!, 'show archive_command')).toEqual([
        { archive_command: `test ! -f ${archive}/%f && cp %p ${archive}/%f` },
      ]);
      // PGMAINT_CONFIG is laid over the demo's file.
      expect(demo.output()).toContain(`config: the demo's, then PGMAINT_CONFIG's ${extra}`);
      const url = /Bull Board: (http:\/\/\S+)\/admin\/queues/.exec(demo.output())![1]!;
      const headers = { authorization: `Bearer ${env.ADMIN_TOKEN}` };
      const { schedules } = (await (await fetch(`${url}/api/schedules`, { headers })).json()) as {
        schedules: { id: string; cron: string }[];
      };
      expect(schedules.find((s) => s.id === 'backup-main-nightly')?.cron).toBe('45 1 * * *');

      const second = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '0' });
      expect(await second.exited).toBe(2);
      expect(second.output().trim()).toMatch(
        new RegExp(
          `^pgmaint: demo: the demo directory ${reEscape(dir)} is in use by PID ${demo.child.pid} \\(a demo still ` +
            `running\\); stop that one \\(Ctrl-C where it runs, or kill ${demo.child.pid}\\), or give this one a ` +
            'directory of its own with --dir DIR$',
        ),
      );
      // The first is untouched: its server, Redis and PostgreSQL answer, and it logged nothing.
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      expect(await listening(Number(new URL(env.REDIS_URL!).port))).toBe(true);
      expect(await sql(env.DATABASE_URL!, 'select 1 as one')).toEqual([{ one: 1 }]);
      expect(demo.output().trimEnd()).toMatch(/Ctrl-C stops everything\.$/);

      await hangArchiving(env.DATABASE_URL!, dir);
      demo.child.kill('SIGINT');
      expect(await demo.exited).toBe(0);
      expect(demo.output()).toMatch(
        /^pgmaint demo: stopping \(running jobs get up to 30 s\), then Redis and PostgreSQL$/m,
      );
      expect(demo.output()).toMatch(/^pgmaint demo: stopped; its PostgreSQL and Redis are down/m);
      expect(processesUnder(dir)).toEqual([]);
      expect(await listening(Number(new URL(env.REDIS_URL!).port))).toBe(false);
      for (const f of ['pg/data/postmaster.pid', 'redis/redis.pid', 'demo.pid'])
        expect(fs.existsSync(path.join(dir, f)), f).toBe(false);
    } finally {
      await demo.killGroup();
    }
  }, 400_000);
});
