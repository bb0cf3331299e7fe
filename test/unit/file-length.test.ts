// The 400-line limit of scripts/file-length.mjs (run by `npm run lint`, part of
// `npm test`): it fails on a tree with a file over the limit, naming the file and its
// count, and passes on the repository itself.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../..');
const script = path.join(root, 'scripts/file-length.mjs');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-file-length-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

const check = (dir: string) => spawnSync(process.execPath, [script, dir], { encoding: 'utf8' });

/** A tree with files of these line counts (each line newline-terminated). */
function tree(name: string, files: Record<string, number>): string {
  const dir = path.join(scratch, name);
  for (const [file, lines] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.writeFileSync(path.join(dir, file), 'x;\n'.repeat(lines));
  }
  return dir;
}

describe('file-length check', () => {
  it('fails on a file of 401 lines, naming it and its count, and only it', () => {
    const dir = tree('long', {
      'src/runner/big.ts': 401,
      'src/runner/fine.ts': 400,
      'jobs/ok.ts': 12,
      'test/long.test.ts': 900,
      'bench/long.ts': 900,
    });
    const run = check(dir);
    expect(run.status).toBe(1);
    expect(run.stderr.trim().split('\n')).toEqual([
      `${path.join('src', 'runner', 'big.ts')}: 401 lines (at most 400; split it by concern)`,
    ]);
  });

  it('looks in jobs/, workers/, schedules/ and bin/ too, and counts a last line without a newline', () => {
    const dir = tree('each', { 'jobs/a.ts': 401, 'workers/b.ts': 401, 'schedules/c.ts': 401, 'bin/d.js': 401 });
    fs.appendFileSync(path.join(dir, 'jobs/a.ts'), 'no newline');
    const run = check(dir);
    expect(run.status).toBe(1);
    for (const [file, lines] of [
      ['jobs/a.ts', 402],
      ['workers/b.ts', 401],
      ['schedules/c.ts', 401],
      ['bin/d.js', 401],
    ] as const)
      expect(run.stderr).toContain(`${path.normalize(file)}: ${lines} lines`);
  });

  it('passes on a tree within the limit and on this repository', () => {
    expect(check(tree('short', { 'src/core/a.ts': 400, 'test/b.test.ts': 401 })).status).toBe(0);
    const repo = check(root);
    expect(repo.stderr).toBe('');
    expect(repo.status).toBe(0);
  });
});
