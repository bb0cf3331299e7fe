import { UnrecoverableError } from 'bullmq';
import { describe, expect, it } from 'vitest';
import {
  classifyError,
  ConfigError,
  exitCodeFor,
  JobAbortedError,
  JobTimeoutError,
  PayloadError,
  PermanentJobError,
  ProcessError,
  ServiceUnavailableError,
  UsageError,
} from '../../src/core/errors.ts';

const sqlError = (code: string) => Object.assign(new Error(`sqlstate ${code}`), { code });

describe('classifyError', () => {
  it.each([
    [new PermanentJobError('denied'), 'permanent'],
    [new UnrecoverableError('no'), 'permanent'],
    [new JobTimeoutError('slow'), 'timeout'],
    [new JobAbortedError('shutdown'), 'retryable'],
    [sqlError('40001'), 'retryable'], // serialization failure
    [sqlError('40P01'), 'retryable'], // deadlock
    [sqlError('55P03'), 'retryable'], // lock_timeout
    [sqlError('57P01'), 'retryable'], // admin shutdown
    [sqlError('08006'), 'retryable'], // connection failure (class 08)
    [sqlError('53300'), 'retryable'], // too many connections
    [sqlError('42P01'), 'permanent'], // undefined table
    [sqlError('42501'), 'permanent'], // insufficient privilege
    [sqlError('23505'), 'permanent'], // unique violation
    [sqlError('28P01'), 'permanent'], // bad password
    [sqlError('XX000'), 'retryable'], // internal error: give it its attempts
    [Object.assign(new Error('connect'), { code: 'ECONNREFUSED' }), 'retryable'],
    [new Error('Connection terminated unexpectedly'), 'retryable'],
    [new ProcessError('pg_dump exited with 1', 1, ''), 'retryable'],
    [new Error('something new'), 'retryable'],
  ])('%s → %s', (err, expected) => {
    expect(classifyError(err)).toBe(expected);
  });

  it('the CLI exit status comes from the stable code', () => {
    expect(exitCodeFor(new UsageError('x'))).toBe(2);
    expect(exitCodeFor(new ConfigError('x'))).toBe(2);
    expect(exitCodeFor(new PayloadError([{ path: 'a', message: 'b' }]))).toBe(2);
    expect(exitCodeFor(new ServiceUnavailableError('x'))).toBe(3);
    expect(exitCodeFor(sqlError('42P01'))).toBe(1);
    expect(exitCodeFor(new Error('x'))).toBe(1);
    expect(exitCodeFor('not an error')).toBe(1);
  });
});
