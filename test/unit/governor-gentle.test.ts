// Inside a unit of a governed run (src/core/gentle.ts, docs/governor.md#inside-a-unit): a
// stream passes at most streamMaxRate while the governor is on, and at once while it is off
// (on a fake clock: what passed by a moment, not how long it took); children start at
// childNice; the session settings are the stricter of the job's and the governor's; bad
// values are refused at start naming the key.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { gentleOf, pgOptions, rateBytes, repackSettings, vacuumSettings } from '../../src/core/gentle.ts';
import { ConfigError } from '../../src/core/errors.ts';
import { loadConfig } from '../../src/core/config.ts';
import { GOVERNOR_DEFAULTS, type GovernorPolicy, mergeGovernor } from '../../src/core/governor-policy.ts';
import { runPipeline, runProcess } from '../../src/core/proc.ts';
import type { Board } from '../../src/governor/board.ts';
import { RunGovernor } from '../../src/governor/run-governor.ts';
import type { GovernedRun } from '../../src/runner/governor-port.ts';

afterEach(() => {
  vi.useRealTimers();
});

function governorOf(policy: GovernorPolicy): RunGovernor {
  const board = { released: async () => undefined, caughtUp: async () => undefined } as unknown as Board;
  const run = {
    queue: 'q',
    jobId: '1',
    job: 'drop-expired-partitions',
    target: 'main',
    override: undefined,
    abort: () => undefined,
    signal: new AbortController().signal,
    timeoutAt: Date.now() + 3_600_000,
    report: async () => undefined,
    logger: { warn: () => undefined },
  } as unknown as GovernedRun;
  return new RunGovernor({ board, holds: async () => [], worker: 'w' }, run, policy, undefined);
}

/** Bytes through a pacer of `gov` by each fake second, 256 kB written in chunks of 16 kB. */
async function passedBySecond(gov: RunGovernor, seconds: number): Promise<number[]> {
  const pacer = gov.pacer('pg_dump of x', { readOnly: true });
  let passed = 0;
  pacer.on('data', (c: Buffer) => (passed += c.length));
  for (let i = 0; i < 16; i++) pacer.write(Buffer.alloc(16 * 1024));
  const out: number[] = [];
  for (let s = 0; s < seconds; s++) {
    await vi.advanceTimersByTimeAsync(1000);
    out.push(passed);
  }
  pacer.destroy();
  await gov.close(true);
  return out;
}

describe('inside a unit of a governed run', () => {
  it('a governed stream passes at most streamMaxRate a second; with the governor off, at once', async () => {
    vi.useFakeTimers();
    const on = await passedBySecond(governorOf(mergeGovernor(GOVERNOR_DEFAULTS, { streamMaxRate: '64k' })), 3);
    // 64 kB a second, and the first chunk at once: never a second's bytes ahead.
    for (const [s, bytes] of on.entries()) expect(bytes, `by second ${s + 1}`).toBeLessThanOrEqual((s + 2) * 64 * 1024);
    expect(on[2]).toBeGreaterThanOrEqual(3 * 64 * 1024);
    expect(on[2]).toBeLessThan(256 * 1024);
    const off = await passedBySecond(governorOf(mergeGovernor(GOVERNOR_DEFAULTS, { enabled: false })), 1);
    expect(off[0]).toBe(256 * 1024);
    const noCap = await passedBySecond(governorOf(mergeGovernor(GOVERNOR_DEFAULTS, { streamMaxRate: null })), 1);
    expect(noCap[0]).toBe(256 * 1024);
  });

  it("children start at childNice, they and what they run; without it, at the worker's own", async () => {
    const own = (await runProcess('nice', [])).stdout.trim();
    expect((await runProcess('nice', [], { nice: 7 })).stdout.trim()).toBe(String(Number(own) + 7));
    expect((await runProcess('nice', [], { nice: null })).stdout.trim()).toBe(own);
    const chunks: Buffer[] = [];
    await runPipeline(
      [
        { cmd: 'sh', args: ['-c', 'nice'], nice: 5 },
        { cmd: 'sh', args: ['-c', 'cat; nice'], nice: 9 },
      ],
      { onStdout: (c) => chunks.push(c) },
    );
    expect(Buffer.concat(chunks).toString().trim().split('\n')).toEqual([
      String(Number(own) + 5),
      String(Number(own) + 9),
    ]);
  });

  it("the sessions' settings: the stricter of the job's and the governor's; none with the governor off", () => {
    const g = gentleOf(GOVERNOR_DEFAULTS)!;
    expect(g).toEqual({
      vacuumCostDelayMs: GOVERNOR_DEFAULTS.vacuumCostDelayMs,
      vacuumCostLimit: GOVERNOR_DEFAULTS.vacuumCostLimit,
      maxParallelMaintenanceWorkers: 0,
      streamBytesPerSecond: rateBytes(GOVERNOR_DEFAULTS.streamMaxRate!),
      childNice: GOVERNOR_DEFAULTS.childNice,
    });
    expect(gentleOf({ ...GOVERNOR_DEFAULTS, enabled: false })).toBeNull();
    expect(rateBytes('800k')).toBe(800 * 1024);
    expect(rateBytes('800')).toBe(800 * 1024);
    expect(rateBytes('8M')).toBe(8 * 1024 * 1024);
    const strict = { ...g, vacuumCostDelayMs: 20, vacuumCostLimit: 100 };
    expect(vacuumSettings(strict, { costDelayMs: 2 }, 200)).toEqual({
      vacuum_cost_delay: '20',
      vacuum_cost_limit: '100',
      max_parallel_maintenance_workers: '0',
    });
    // The job's own throttle stays where it is the stricter.
    expect(vacuumSettings(strict, { costDelayMs: 50, costLimit: 30 }, 200)).toMatchObject({
      vacuum_cost_delay: '50',
      vacuum_cost_limit: '30',
    });
    expect(vacuumSettings(null, { costDelayMs: 2 }, 200)).toEqual({
      vacuum_cost_delay: '2',
      vacuum_cost_limit: '200',
    });
    expect(pgOptions(repackSettings(strict), '-c statement_timeout=0')).toBe(
      '-c statement_timeout=0 -c max_parallel_maintenance_workers=0 -c vacuum_cost_delay=20 -c vacuum_cost_limit=100',
    );
    expect(pgOptions(repackSettings(null))).toBeUndefined();
  });

  it('bad values are refused at start, naming the key', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-gentle-'));
    const refusal = (governor: object) => {
      const file = path.join(dir, 'config.json');
      fs.writeFileSync(file, JSON.stringify({ governor }));
      try {
        loadConfig({ DATABASE_URL: 'postgres://app@db:5432/dairy', PGMAINT_CONFIG: file });
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      throw new Error('expected a ConfigError');
    };
    expect(refusal({ streamMaxRate: 'fast' })).toMatch(/governor\.streamMaxRate: must look like "800k"/);
    expect(refusal({ streamMaxRate: '0' })).toMatch(/governor\.streamMaxRate/);
    expect(refusal({ vacuumCostDelayMs: 500 })).toMatch(/governor\.vacuumCostDelayMs: .*100/);
    expect(refusal({ vacuumCostLimit: 0 })).toMatch(/governor\.vacuumCostLimit: .*1/);
    expect(refusal({ maxParallelMaintenanceWorkers: -1 })).toMatch(/governor\.maxParallelMaintenanceWorkers/);
    expect(refusal({ maxParallelMaintenanceWorkers: 1.5 })).toMatch(/governor\.maxParallelMaintenanceWorkers/);
    expect(refusal({ childNice: 20 })).toMatch(/governor\.childNice: .*19/);
    expect(refusal({ childNice: 'low' })).toMatch(/governor\.childNice: .*number/i);
  });
});
