// Jobs that exist only in tests: they provoke real PostgreSQL errors and real child
// processes so the runner's retry, timeout and abort paths meet the real thing.
import { z } from 'zod';
import { defineJob, targetField } from '../../src/runner/job-definition.ts';
import { binPath, runProcess } from '../../src/core/proc.ts';
import { PermanentJobError } from '../../src/core/errors.ts';

export const sqlProbe = defineJob({
  name: 'sql-probe',
  description: 'test only: runs one of a few fixed statements',
  payload: z.object({
    target: targetField,
    scenario: z.enum(['missing-relation', 'lock-table', 'syntax', 'ok']),
    table: z
      .string()
      .regex(/^[a-z_]+$/)
      .default('probe_lock'),
  }),
  defaults: { attempts: 3, backoffMs: 200, timeoutMs: 60_000, concurrency: 2 },
  async handler(ctx, p) {
    switch (p.scenario) {
      case 'missing-relation':
        await ctx.pool.query('select * from no_such_table');
        return 'unreachable';
      case 'syntax':
        await ctx.pool.query('selec 1');
        return 'unreachable';
      case 'lock-table': {
        const client = await ctx.pool.connect();
        try {
          await client.query('begin');
          await client.query(`set local lock_timeout = '300ms'`);
          await client.query(`lock table ${p.table} in access share mode`);
          await client.query('commit');
          return { locked: p.table };
        } finally {
          await client.query('rollback').catch(() => undefined);
          client.release();
        }
      }
      case 'ok':
        return { ok: true };
    }
  },
});

export const slowChild = defineJob({
  name: 'slow-child',
  description: 'test only: a child process that outlives the maximum run time',
  payload: z.object({ target: targetField }),
  defaults: { attempts: 2, backoffMs: 100, timeoutMs: 1500, concurrency: 1 },
  async handler(ctx) {
    // psql sleeping in the server: killing the client must end it.
    await runProcess(binPath('psql'), ['-XAtq', '-c', `select pg_sleep(60) /* pgmaint-slow-child ${ctx.jobId} */`], {
      libpq: ctx.libpqSettings(),
      signal: ctx.signal,
    });
    return 'unreachable';
  },
});

export const failWith = defineJob({
  name: 'fail-with',
  description: 'test only: fails at once with a chosen stable code and message',
  payload: z.object({
    target: targetField,
    code: z.string().regex(/^[A-Z][A-Z0-9_]*$/),
    message: z.string().min(1),
  }),
  defaults: { attempts: 1, backoffMs: 100, timeoutMs: 60_000, concurrency: 2 },
  async handler(_ctx, p) {
    throw new PermanentJobError(p.message, p.code);
  },
});
