// A batch of ANALYZEs on one session (vacuum-analyze's): consecutive ANALYZEs commit
// together, so the application's sessions reload the new statistics once per batch,
// not once per table.
import type pg from 'pg';

/**
 * ANALYZEs commit together, up to this long or this many. Each commit of new statistics
 * makes every session using the table reload them, and the application feels each
 * reload (docs/benchmarks.md, live impact); a batch holds its tables' SHARE UPDATE
 * EXCLUSIVE locks, and its transaction, only this long. VACUUM cannot run in a
 * transaction: the batch commits before one.
 */
const ANALYZE_BATCH_MS = 2000;
const ANALYZE_BATCH_TABLES = 50;

/**
 * The open transaction that ANALYZEs join (ANALYZE_BATCH_MS). Each runs under a savepoint:
 * one that fails (its lock not granted, the budget's cancel) takes only itself back.
 */
export class AnalyzeBatch {
  private openedAt: number | undefined;
  private tables = 0;

  constructor(private readonly client: pg.PoolClient) {}

  async run(analyze: string): Promise<void> {
    if (this.openedAt === undefined) {
      await this.client.query('begin');
      this.openedAt = Date.now();
      this.tables = 0;
    }
    await this.client.query('savepoint analyze_table');
    try {
      await this.client.query(analyze);
      await this.client.query('release savepoint analyze_table');
    } catch (err) {
      // On a session that is gone this fails too; the ANALYZE's own error is the one to report.
      await this.client.query('rollback to savepoint analyze_table').catch(() => undefined);
      throw err;
    }
    if (++this.tables >= ANALYZE_BATCH_TABLES || Date.now() - this.openedAt >= ANALYZE_BATCH_MS) await this.commit();
  }

  async commit(): Promise<void> {
    if (this.openedAt === undefined) return;
    this.openedAt = undefined;
    await this.client.query('commit');
  }

  async abandon(): Promise<void> {
    if (this.openedAt === undefined) return;
    this.openedAt = undefined;
    await this.client.query('rollback').catch(() => undefined);
  }
}
