import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RunHistory, type RunStart } from '../../src/runner/history.ts';
import { createHarness, type Harness } from '../support/harness.ts';

describe('run history when PostgreSQL fails a flush', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await createHarness('units_history');
  });
  afterAll(() => h.close());

  it('keeps the rows buffered, merges a finish that came meanwhile, and writes them once it can', async () => {
    const errors: unknown[] = [];
    const history = new RunHistory(h.admin, { flushDelayMs: 60_000, onError: (e) => errors.push(e) });
    await history.migrate();
    const run: RunStart = {
      queue: 'noop',
      jobId: '1',
      job: 'noop',
      target: 'main',
      payload: {},
      trigger: 'ad-hoc',
      scheduledFor: new Date(),
      attempt: 1,
      worker: 'w',
      recovered: false,
    };
    const id = history.start(run);
    await h.admin.query('alter table pgmaint.run_history rename to run_history_away');
    await expect(history.flush()).rejects.toThrow(/run_history/);
    // The run finishes while its insert is still unwritten.
    void history.finish(id, 'succeeded', { result: { ok: true } }).catch(() => undefined);
    await h.admin.query('alter table pgmaint.run_history_away rename to run_history');
    await history.flush();
    const { rows } = await h.admin.query('select job_id, outcome, result from pgmaint.run_history');
    expect(rows).toEqual([{ job_id: '1', outcome: 'succeeded', result: { ok: true } }]);
    await history.close();
  });
});
