// Secrets never reach the logs: structured fields are removed, URL passwords and
// bearer tokens are masked in messages and error texts.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.ts';

function capture(): { logger: ReturnType<typeof createLogger>; text: () => string } {
  let out = '';
  const sink = new Writable({
    write: (chunk, _enc, cb) => {
      out += chunk.toString();
      cb();
    },
  });
  return { logger: createLogger('info', {}, sink), text: () => out };
}

describe('log redaction', () => {
  it('removes url/password/token fields and masks secrets inside messages and errors', () => {
    const { logger, text } = capture();
    logger.info(
      { url: 'postgres://app:s3cret-pw@db/dairy', target: { password: 's3cret-pw' }, token: 'tok-0123456789abcdef' },
      'connecting',
    );
    logger.warn('retrying postgres://app:s3cret-pw@db:5432/dairy with Authorization: Bearer tok-0123456789abcdef');
    logger.error(
      { err: new Error('could not connect to postgresql://app:s3cret-pw@db/dairy?password=s3cret-pw') },
      'failed',
    );
    const out = text();
    expect(out).toContain('connecting');
    expect(out).toContain('postgres://app:***@db:5432/dairy');
    expect(out).not.toContain('s3cret-pw');
    expect(out).not.toContain('tok-0123456789abcdef');
  });
});
