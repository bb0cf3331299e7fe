import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DiskFlush } from '../../src/backup/base-backup-files.ts';
import { runProcess } from '../../src/core/proc.ts';
import { describe, expect, it } from 'vitest';

describe('DiskFlush', () => {
  it('flushes a tree while a process writes it, and each file again only once it has grown', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-flush-'));
    try {
      const flush = new DiskFlush();
      // Ten files, each written in two halves 150 ms apart, by another process.
      const writing = runProcess(
        'sh',
        [
          '-c',
          'mkdir sub; for i in 0 1 2 3 4 5 6 7 8 9; do head -c 65536 /dev/zero > sub/f$i; done; sleep 0.15; ' +
            'for i in 0 1 2 3 4 5 6 7 8 9; do head -c 65536 /dev/zero >> sub/f$i; done',
        ],
        { cwd: dir },
      );
      flush.start(dir, writing);
      await writing;
      await flush.finish(dir);
      // Everything was flushed as it last changed: a pass now has nothing left to do.
      expect(await flush.pass(dir)).toBe(0);
      fs.appendFileSync(path.join(dir, 'sub', 'f3'), 'more');
      expect(await flush.pass(dir)).toBe(1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
