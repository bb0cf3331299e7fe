// The server a cluster restore starts on its restored directory: isolated from the
// live cluster before it starts (isolateConfig), watched until recovery reaches its
// target, read for the proof, then handed over (kept running) or stopped cleanly.
// While the restore runs, the server trusts local connections on its Unix socket,
// which lies in its own data directory (mode 0700): only its OS user and root reach
// it. That line goes before the server is handed over.
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { OsOwner } from '../core/local-postgres.ts';
import { PermanentJobError } from '../core/errors.ts';
import { binPath, runProcess } from '../core/proc.ts';
import { quoteIdent } from '../core/sql.ts';
import { RESTORE_LOG } from './cluster-restore-checks.ts';
import type { EngineRun, RestoreTarget } from './engine.ts';
import { confString, describeTarget } from './restore-dir.ts';
import { LIVE_PATH_SETTINGS } from './scratch-instance.ts';

const HBA_BEGIN = '# pgmaint restore: trust on the private socket while the restore proves itself';
const HBA_END = '# pgmaint restore: end';
/** pg_hba.conf when the live cluster kept its own outside the data directory (it is not in the backup). */
const DEFAULT_HBA = 'local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n';

/** Comments out settings that point at the live cluster's files, lets the restore in, appends `settings`. */
export async function isolateConfig(dataDir: string, settings: Record<string, string>): Promise<void> {
  const conf = path.join(dataDir, 'postgresql.conf');
  const text = await fs.readFile(conf, 'utf8').catch(() => '');
  const cleaned = text
    .split('\n')
    .map((l) => (LIVE_PATH_SETTINGS.test(l) ? `# pgmaint restore: disabled: ${l}` : l))
    .join('\n');
  await fs.writeFile(conf, cleaned);
  const hbaFile = path.join(dataDir, 'pg_hba.conf');
  const hba = await fs.readFile(hbaFile, 'utf8').catch(() => DEFAULT_HBA);
  await fs.writeFile(hbaFile, `${HBA_BEGIN}\nlocal all all trust\n${HBA_END}\n${hba}`);
  const ident = path.join(dataDir, 'pg_ident.conf');
  if (!(await fs.stat(ident).catch(() => undefined))) await fs.writeFile(ident, '');
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confString(v)}`);
  await fs.appendFile(
    path.join(dataDir, 'postgresql.auto.conf'),
    `\n# pgmaint restore: isolated from the live cluster (archiving off until the next steps turn it on)\n` +
      `${lines.join('\n')}\n`,
  );
  await fs.rm(path.join(dataDir, 'postmaster.pid'), { force: true });
}

export type RecoveryState = 'promoted' | 'paused' | 'standby';

export class RestoredServer {
  readonly logFile: string;
  private started = false;

  constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly owner: OsOwner | undefined,
    private readonly user: string,
    private readonly database: string,
  ) {
    this.logFile = path.join(dataDir, RESTORE_LOG);
  }

  private get ids() {
    return this.owner ? { uid: this.owner.uid, gid: this.owner.gid } : {};
  }

  /** Starts the server detached (pg_ctl gives it a session of its own): it outlives the worker. */
  async start(signal: AbortSignal, pgbackrestOptions: boolean): Promise<void> {
    await fs.writeFile(this.logFile, '');
    if (this.owner) await fs.chown(this.logFile, this.owner.uid, this.owner.gid);
    this.started = true;
    await runProcess(binPath('pg_ctl'), ['-D', this.dataDir, '-l', this.logFile, '-W', 'start'], {
      ...this.ids,
      signal,
      cwd: '/',
      pgbackrestOptions,
    });
  }

  log(): Promise<string> {
    return fs.readFile(this.logFile, 'utf8').catch(() => '');
  }

  async logTail(): Promise<string> {
    return (await this.log()).trim().split('\n').slice(-8).join(' | ');
  }

  async running(): Promise<boolean> {
    return runProcess(binPath('pg_ctl'), ['-D', this.dataDir, 'status'], { ...this.ids, cwd: '/' }).then(
      () => true,
      () => false,
    );
  }

  client(): pg.Client {
    const c = new pg.Client({
      host: this.dataDir,
      port: this.port,
      user: this.user,
      database: this.database,
      connectionTimeoutMillis: 3000,
    });
    c.on('error', () => undefined); // the server may be stopped under it
    return c;
  }

  /** "Recovery ended before target" is a failed restore (the archive lacks WAL), never a success. */
  private async throwIfRecoveryFailed(target: RestoreTarget): Promise<void> {
    if (/recovery ended before configured recovery target was reached/.test(await this.log())) {
      throw new PermanentJobError(
        `recovery ended before reaching ${describeTarget(target)}: the archive lacks WAL between the base backup ` +
          `and the target. Server log: ${await this.logTail()}`,
        'RECOVERY_FAILED',
      );
    }
  }

  /**
   * Waits until recovery is where it was asked to end: promoted, paused at the target, or (a standby of
   * the archive) replaying nothing more for 3 s. Fails on the log's verdict, a stopped server, the timeout.
   */
  async waitForTarget(
    run: Pick<EngineRun, 'signal'>,
    target: RestoreTarget,
    o: { promote: boolean; standby: boolean; timeoutSeconds: number },
  ): Promise<RecoveryState> {
    const deadline = Date.now() + o.timeoutSeconds * 1000;
    let lastLsn: string | null = null;
    let still = 0;
    // Every 100 ms, as an operator's script would: the wait is part of the recovery time.
    for (let round = 1; ; round++) {
      run.signal.throwIfAborted();
      await this.throwIfRecoveryFailed(target);
      const c = this.client();
      try {
        await c.connect();
        const { rows } = await c.query<{ r: boolean; paused: string | null; lsn: string | null }>(
          `select pg_is_in_recovery() as r, pg_last_wal_replay_lsn()::text as lsn,
                  case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() end as paused`,
        );
        const s = rows[0]!;
        if (!s.r) return 'promoted';
        if (!o.promote && !o.standby && s.paused === 'paused') return 'paused';
        if (o.standby && s.lsn) {
          still = s.lsn === lastLsn ? still + 1 : 0;
          lastLsn = s.lsn;
          if (still >= 30) return 'standby';
        }
      } catch {
        // starting up, or not consistent yet
      } finally {
        await c.end().catch(() => undefined);
      }
      if (round % 10 === 0 && !(await this.running())) {
        // Stopped: its log is complete now, and may hold the verdict written as it went down.
        await this.throwIfRecoveryFailed(target);
        throw new Error(`the restored server stopped during recovery. Server log: ${await this.logTail()}`);
      }
      if (Date.now() > deadline)
        throw new Error(
          `recovery did not reach ${describeTarget(target)} within ${o.timeoutSeconds} s. Server log: ` +
            (await this.logTail()),
        );
      await sleep(100);
    }
  }

  /** Row counts, the last replayed commit, where the log says recovery stopped, the WAL it replayed. */
  async proof(state: RecoveryState, tables: string[], inspect?: (client: pg.Client) => Promise<void>) {
    const c = this.client();
    await c.connect();
    const rowCounts: Record<string, number> = {};
    let lastReplayedCommit: string | null;
    try {
      for (const t of tables) {
        const [schema, name] = [t.slice(0, t.indexOf('.')), t.slice(t.indexOf('.') + 1)];
        const { rows } = await c.query<{ n: string }>(
          `select count(*) as n from ${quoteIdent(schema)}.${quoteIdent(name)}`,
        );
        rowCounts[t] = Number(rows[0]!.n);
      }
      const { rows } = await c.query<{ t: Date | null }>('select pg_last_xact_replay_timestamp() as t');
      lastReplayedCommit = rows[0]!.t?.toISOString() ?? null;
      await inspect?.(c);
    } finally {
      await c.end().catch(() => undefined);
    }
    const log = await this.log();
    const stop = /recovery stopping [^\n]*/.exec(log)?.[0] ?? null;
    const at = stop && /time (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(?::?(\d\d))?/.exec(stop);
    const wal = [...log.matchAll(/restored log file "([0-9A-F]{24})" from archive/g)].map((m) => m[1]!);
    return {
      state,
      stopLine: stop,
      stoppedAt: at ? new Date(`${at[1]!.replace(' ', 'T')}${at[2]}:${at[3] ?? '00'}`).toISOString() : null,
      lastReplayedCommit,
      walReplayed: { segments: new Set(wal).size, first: wal[0] ?? null, last: wal.at(-1) ?? null },
      rowCounts,
    };
  }

  /** Drops the restore's trust line; then reloads (kept running) or stops cleanly, ready to start. */
  async handOver(keepRunning: boolean): Promise<void> {
    const hbaFile = path.join(this.dataDir, 'pg_hba.conf');
    const hba = await fs.readFile(hbaFile, 'utf8');
    const end = hba.indexOf(`${HBA_END}\n`);
    if (hba.startsWith(HBA_BEGIN) && end >= 0) await fs.writeFile(hbaFile, hba.slice(end + HBA_END.length + 1));
    if (keepRunning) {
      await runProcess(binPath('pg_ctl'), ['-D', this.dataDir, 'reload'], { ...this.ids, cwd: '/' });
    } else {
      await this.stop('fast');
    }
  }

  /** Stops the server and waits for it; never throws. */
  async stop(mode: 'fast' | 'immediate'): Promise<void> {
    if (!this.started) return;
    await runProcess(binPath('pg_ctl'), ['-D', this.dataDir, '-m', mode, '-w', '-t', '600', 'stop'], {
      ...this.ids,
      cwd: '/',
    }).catch(() => undefined);
    // pg_ctl stop can fail while the postmaster is still starting; make sure.
    for (let i = 0; i < 20 && (await this.running()); i++) await sleep(250);
  }
}
