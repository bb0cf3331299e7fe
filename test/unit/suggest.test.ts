import { didYouMean } from '../../src/core/suggest.ts';
import { describe, expect, it } from 'vitest';

describe('didYouMean', () => {
  const jobs = ['backup', 'base-backup', 'archive-check', 'vacuum-analyze', 'noop'];
  it('names the one known name near a typo, in letter case, an edit or two, or a prefix; else nothing', () => {
    expect(didYouMean('bakup', jobs)).toBe('; did you mean "backup"?');
    expect(didYouMean('Backup', jobs)).toBe('; did you mean "backup"?');
    expect(didYouMean('archive-chekc', jobs)).toBe('; did you mean "archive-check"?');
    expect(didYouMean('vacuum', jobs)).toBe('; did you mean "vacuum-analyze"?');
    expect(didYouMean('dryrun', ['target', 'dryRun'])).toBe('; did you mean "dryRun"?');
    expect(didYouMean('nosuch', jobs)).toBe('');
    expect(didYouMean('nop', ['noop', 'nope'])).toBe('; did you mean "noop"?');
    expect(didYouMean('xy', ['xz'])).toBe('');
  });
});
