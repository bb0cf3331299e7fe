// `pgmaint demo --offsite` as a person runs it: a local S3 bucket (TLS), pgBackRest
// keeping the physical backups there encrypted, dumps uploaded encrypted; a base
// backup, a dump and its restore check all succeed, and Ctrl-C leaves no server behind.
// The plain demo run next in the same directory archives locally again: nothing of the
// off-site run's archive_command (an ALTER SYSTEM) is left to fail against a bucket that is gone.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness, type Spawned } from '../support/harness.ts';
import { stopLeftovers } from '../support/leftovers.ts';

let h: Harness;

beforeAll(async () => {
  h = await createHarness('demo_offsite');
});
afterAll(async () => {
  await h.close();
  stopLeftovers([path.join(h.dir, 'demo/pg/data')]);
});

const processesUnder = (dir: string) =>
  execFileSync('ps', ['-eo', 'args'])
    .toString()
    .split('\n')
    .filter((l) => l.includes(dir));

/** The running demo's API, signed in with the admin token from its banner. */
function apiOf(demo: Spawned) {
  const url = /Bull Board: (http:\/\/\S+)\/admin\/queues/.exec(demo.output())![1]!;
  const token = /admin token: +(\S+)/.exec(demo.output())![1]!;
  const api = async (method: string, route: string, body?: object) => {
    const res = await fetch(`${url}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
    return res.json() as Promise<Record<string, any>>;
  };
  /** Enqueues a job and waits for it to finish. */
  const run = async (queue: string, payload: object = {}) => {
    const { id } = await api('POST', `/api/jobs/${queue}`, payload);
    for (let i = 0; i < 240; i++) {
      const job = await api('GET', `/api/jobs/${queue}/${id}`);
      if (job.state === 'completed' || job.state === 'failed') return job;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`${queue} ${id} did not finish`);
  };
  return { api, run };
}

describe('pgmaint demo --offsite', () => {
  const title =
    'backs up to the bucket through pgBackRest, uploads an encrypted dump, proves it, and stops cleanly; ' +
    'the plain demo after it archives locally';
  it(title, async () => {
    const dir = path.join(h.dir, 'demo');
    const demo = h.spawnPgmaint(['demo', '--offsite', '--scale', 'small', '--dir', dir], {
      PORT: '0',
      LOG_LEVEL: 'warn',
    });
    await demo.waitFor(/Ctrl-C stops everything/, 120_000);
    expect(demo.output()).toMatch(
      new RegExp(
        '^ {2}off-site mode: WAL and base backups through pgBackRest \\(stanza main\\), dumps and partition ' +
          'archives, encrypted, to bucket pgmaint at https://127\\.0\\.0\\.1:\\d+ \\(a local S3 server\\)$',
        'm',
      ),
    );
    const { api, run } = apiOf(demo);
    const base = await run('base-backup', { type: 'full' });
    expect(base.state, base.failedReason).toBe('completed');
    expect(base.result).toMatchObject({ engine: 'pgbackrest', type: 'full', verified: { status: 'valid' } });
    const dump = await run('backup');
    expect(dump.state, dump.failedReason).toBe('completed');
    const check = await run('restore-check');
    expect(check.state, check.failedReason).toBe('completed');
    const backups = await api('GET', '/api/backups');
    expect(backups.engine).toBe('pgbackrest');
    expect(backups.pgbackrest.cipher).toBe('aes-256-cbc');
    expect(backups.dumps[0]).toMatchObject({ restoreCheck: { ok: true } });

    demo.child.kill('SIGINT');
    expect(await demo.exited).toBe(0);
    expect(processesUnder(dir)).toEqual([]);

    // The plain demo in the same directory: the off-site run's S3 server is gone with it.
    const plain = h.spawnPgmaint(['demo', '--scale', 'small', '--dir', dir], { PORT: '0', LOG_LEVEL: 'warn' });
    try {
      await plain.waitFor(/Ctrl-C stops everything/, 120_000);
      expect(plain.output()).not.toMatch(/off-site mode/);
      const databaseUrl = /^export DATABASE_URL='(.*)'$/m.exec(fs.readFileSync(path.join(dir, 'env.sh'), 'utf8'))![1]!;
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      const archive = path.join(dir, 'pg/wal-archive');
      try {
        const { rows } = await client.query('show archive_command');
        expect(rows).toEqual([{ archive_command: `test ! -f ${archive}/%f && cp %p ${archive}/%f` }]);
      } finally {
        await client.end();
      }
      const archiveCheck = await apiOf(plain).run('archive-check');
      expect(archiveCheck.state, archiveCheck.failedReason).toBe('completed');
      expect(archiveCheck.result).toMatchObject({ lagSegments: 0, pgStatArchiver: { failedCount: 0 } });

      plain.child.kill('SIGINT');
      expect(await plain.exited).toBe(0);
      expect(plain.output()).toMatch(/^pgmaint demo: stopped; its PostgreSQL and Redis are down/m);
      expect(processesUnder(dir)).toEqual([]);
      expect(fs.existsSync(path.join(dir, 'pg/data/postmaster.pid'))).toBe(false);
    } finally {
      await plain.killGroup();
    }
  }, 400_000);
});
