// `pgmaint demo --offsite` as a person runs it: a local S3 bucket (TLS), pgBackRest
// keeping the physical backups there encrypted, dumps uploaded encrypted; a base
// backup, a dump and its restore check all succeed, and Ctrl-C leaves no server behind.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness } from './support/harness.ts';

let h: Harness;

beforeAll(async () => {
  h = await createHarness('demo_offsite');
});
afterAll(() => h.close());

describe('pgmaint demo --offsite', () => {
  it('backs up to the bucket through pgBackRest, uploads an encrypted dump, proves it, and stops cleanly', async () => {
    const dir = path.join(h.dir, 'demo');
    const demo = h.spawnPgmaint(['demo', '--offsite', '--scale', 'small', '--dir', dir], {
      PORT: '0',
      LOG_LEVEL: 'warn',
    });
    await demo.waitFor(/pgmaint demo is up/, 120_000);
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
    const finished = async (queue: string, id: string) => {
      for (let i = 0; i < 240; i++) {
        const job = await api('GET', `/api/jobs/${queue}/${id}`);
        if (job.state === 'completed' || job.state === 'failed') return job;
        await new Promise((r) => setTimeout(r, 500));
      }
      throw new Error(`${queue} ${id} did not finish`);
    };
    const base = await finished('base-backup', (await api('POST', '/api/jobs/base-backup', { type: 'full' })).id);
    expect(base.state, base.failedReason).toBe('completed');
    expect(base.result).toMatchObject({ engine: 'pgbackrest', type: 'full', verified: { status: 'valid' } });
    const dump = await finished('backup', (await api('POST', '/api/jobs/backup', {})).id);
    expect(dump.state, dump.failedReason).toBe('completed');
    const check = await finished('restore-check', (await api('POST', '/api/jobs/restore-check', {})).id);
    expect(check.state, check.failedReason).toBe('completed');
    const backups = await api('GET', '/api/backups');
    expect(backups.engine).toBe('pgbackrest');
    expect(backups.pgbackrest.cipher).toBe('aes-256-cbc');
    expect(backups.dumps[0]).toMatchObject({ restoreCheck: { ok: true } });

    demo.child.kill('SIGINT');
    expect(await demo.exited).toBe(0);
    const left = execFileSync('ps', ['-eo', 'args'])
      .toString()
      .split('\n')
      .filter((l) => l.includes(dir));
    expect(left).toEqual([]);
  }, 240_000);
});
