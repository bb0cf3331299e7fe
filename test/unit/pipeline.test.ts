import { runPipeline } from '../../src/core/proc.ts';
import { describe, expect, it } from 'vitest';

describe('runPipeline', () => {
  it('streams a | b | c through OS pipes and hands the last stage its output', async () => {
    const chunks: Buffer[] = [];
    await runPipeline(
      [
        { cmd: 'seq', args: ['1', '50000'] },
        { cmd: 'zstd', args: ['-q', '-c'] },
        { cmd: 'zstd', args: ['-q', '-d', '-c'] },
      ],
      { onStdout: (c) => chunks.push(c) },
    );
    const lines = Buffer.concat(chunks).toString().trimEnd().split('\n');
    expect(lines).toHaveLength(50000);
    expect(lines.at(-1)).toBe('50000');
  });

  it('names the stage that failed, not the one that died of it', async () => {
    // The writer fails: its reader ends normally and must not hide it.
    await expect(
      runPipeline([
        { cmd: 'sh', args: ['-c', 'echo partial; echo "no space left" >&2; exit 3'] },
        { cmd: 'cat', args: [] },
      ]),
    ).rejects.toThrow(/^sh exited with 3: no space left$/);
    // The reader fails: the writer dies of the closed pipe, or is killed.
    await expect(
      runPipeline([
        { cmd: 'yes', args: [] },
        { cmd: 'sh', args: ['-c', 'head -c 10 >/dev/null; echo "bad archive" >&2; exit 4'] },
      ]),
    ).rejects.toThrow(/^sh exited with 4: bad archive$/);
  });

  it('kills every stage on abort', async () => {
    const ac = new AbortController();
    const started = Date.now();
    setTimeout(() => ac.abort(), 200);
    await expect(
      runPipeline(
        [
          { cmd: 'sleep', args: ['30'] },
          { cmd: 'sleep', args: ['30'] },
        ],
        { signal: ac.signal },
      ),
    ).rejects.toThrow(/abort/i);
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});
