// The one cluster restore: restore-cluster runs it for an operator, pitr-drill into a
// scratch directory, so every weekly drill rehearses the operator's command. The engine
// restores a set into a staging sibling of `into` (engine.restore); the directory is
// isolated from the live cluster (its live paths commented out, archiving off), marked
// incomplete, renamed to `into`, and started on localhost:port. Recovery runs to the
// target: promoted, paused there (recovery_target_action=pause), or, for the end of the
// archive without promotion, a standby of the archive. The proof is read from the server
// (row counts, the last replayed commit) and its log (where recovery stopped, the WAL
// replayed); only then is the marker removed. Without a port to keep, the server is
// stopped cleanly and the directory is ready to start. A failed restore removes what it
// made; a killed one leaves the staging directory or the marker, which its retry clears
// (cluster-restore-checks.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { freePort, postgresUser } from '../core/local-postgres.ts';
import { PermanentJobError } from '../core/errors.ts';
import { binPath, runProcess } from '../core/proc.ts';
import { backupDirOf } from '../core/config.ts';
import type { BackupEngine, EngineRun, RestoreTarget } from './engine.ts';
import {
  checkCatalog,
  checkInto,
  checkNotLive,
  claimInto,
  checkPortFree,
  INCOMPLETE_MARKER,
  RESTORE_LOG,
  stagingPathOf,
} from './cluster-restore-checks.ts';
import { liveDataDirectory } from './restore-dir.ts';
import { isolateConfig, RestoredServer } from './restored-server.ts';

export interface ClusterRestoreRequest {
  into: string;
  target: RestoreTarget;
  /** A base backup label or pgBackRest set; default the newest that fits the target. */
  set?: string;
  /** Listen on localhost:port and keep running after the restore; default: a free port, stopped at the end. */
  port?: number;
  promote: boolean;
  /** schema.table: counted on the restored server, the proof. */
  tables: string[];
  recoveryTimeoutSeconds: number;
  /** The role and database the proof connects as (the target's). */
  user: string;
  database: string;
  /** Holds the chosen set against expiry while the restore runs (engine RestoreOptions.lock). */
  lock?: pg.ClientBase;
  systemIdentifier?: string;
  /** cluster_name of the restored server. */
  clusterName: string;
  /** Settings over the restored cluster's own (the drill's smaller shared_buffers). */
  settings?: Record<string, string>;
  /** Runs on the restored server at the target, before it is handed over or stopped (the drill's markers). */
  inspect?: (client: pg.Client) => Promise<void>;
}

export interface RecoveryProof {
  /** How recovery ended: promoted, paused at the target, or a standby at the end of the archive. */
  state: 'promoted' | 'paused' | 'standby';
  /** The server log line where recovery stopped at the target (none for the end of the archive). */
  stopLine: string | null;
  /** The time in that line. */
  stoppedAt: string | null;
  /** The commit time of the last transaction replayed. */
  lastReplayedCommit: string | null;
  walReplayed: { segments: number; first: string | null; last: string | null };
  rowCounts: Record<string, number>;
}

export interface ClusterRestoreOutcome {
  set: { label: string; stoppedAt: string };
  dataDir: string;
  port: number;
  running: boolean;
  promoted: boolean;
  proof: RecoveryProof;
  restoreSeconds: number;
  verifySeconds: number;
  replaySeconds: number;
  /** From the start of the restore to the server at its target (promoted and accepting connections). */
  totalSeconds: number;
}

/** Restores `engine`'s set into `req.into` and runs recovery to the target; see the file's comment. */
export async function restoreCluster(
  run: EngineRun,
  engine: BackupEngine,
  req: ClusterRestoreRequest,
): Promise<ClusterRestoreOutcome> {
  const into = path.resolve(req.into);
  const live = await liveDataDirectory(run.pool);
  // Checked before anything is written beside it (the claim): nothing is written in or beside the live one.
  await checkNotLive(into, live);
  const release = await claimInto(into);
  try {
    const { existed } = await checkInto(into, live, (m) => run.log(m));
    if (req.port) await checkPortFree(req.port);
    checkCatalog(await engine.catalog(backupDirOf(run.config)), req.target, req.set, run.target.name);
    return await restoreClaimed(run, engine, req, into, existed);
  } finally {
    await release();
  }
}

async function restoreClaimed(
  run: EngineRun,
  engine: BackupEngine,
  req: ClusterRestoreRequest,
  into: string,
  existed: boolean,
): Promise<ClusterRestoreOutcome> {
  const owner = postgresUser();
  const staging = stagingPathOf(into);
  const started = Date.now();
  let server: RestoredServer | undefined;
  let outcome: ClusterRestoreOutcome;
  try {
    const restored = await engine.restore(run, staging, req.target, {
      set: req.set,
      targetAction: req.promote ? 'promote' : 'pause',
      owner,
      lock: req.lock,
      systemIdentifier: req.systemIdentifier,
    });
    const standby = req.target === 'latest' && !req.promote;
    const port = req.port ?? (await freePort());
    // What the engine wrote for the staging path (pgBackRest's restore_command has --pg1-path) is for `into`.
    const auto = path.join(staging, 'postgresql.auto.conf');
    await fs.writeFile(auto, (await fs.readFile(auto, 'utf8')).replaceAll(staging, into));
    await isolateConfig(staging, {
      ...req.settings,
      port: String(port),
      listen_addresses: 'localhost',
      unix_socket_directories: into,
      archive_mode: 'off',
      archive_command: '',
      archive_cleanup_command: '',
      recovery_end_command: '',
      hot_standby: 'on',
      logging_collector: 'off',
      log_destination: 'stderr',
      cluster_name: req.clusterName,
    });
    if (standby) {
      await fs.rm(path.join(staging, 'recovery.signal'), { force: true });
      await fs.writeFile(path.join(staging, 'standby.signal'), '');
    }
    await fs.writeFile(path.join(staging, INCOMPLETE_MARKER), `${JSON.stringify({ job: run.jobId, started })}\n`);
    if (owner) await runProcess('chown', ['-R', `${owner.uid}:${owner.gid}`, staging]);
    await syncDir(staging);
    // On Linux a directory takes the name of an empty one.
    await fs.rename(staging, into);
    await syncDir(path.dirname(into));
    server = new RestoredServer(into, port, owner, req.user, req.database);
    const restoreSeconds = (Date.now() - started) / 1000;
    await run.progress(30, `replaying WAL from the archive to the target (server on localhost:${port})`);
    const replayStarted = Date.now();
    await server.start(run.signal, restored.startOptions.pgbackrestOptions);
    const state = await server.waitForTarget(run, req.target, {
      promote: req.promote,
      standby,
      timeoutSeconds: req.recoveryTimeoutSeconds,
    });
    const reached = Date.now();
    await run.progress(85, `recovery ${state} after ${((reached - started) / 1000).toFixed(1)} s; reading the proof`);
    const proof = await server.proof(state, req.tables, req.inspect);
    await server.handOver(Boolean(req.port));
    // The last step: from here the directory is a finished restore.
    await fs.rm(path.join(into, INCOMPLETE_MARKER));
    await syncDir(into);
    outcome = {
      set: restored.set,
      dataDir: into,
      port,
      running: Boolean(req.port),
      promoted: state === 'promoted',
      proof,
      restoreSeconds,
      verifySeconds: restored.verifySeconds,
      replaySeconds: (reached - replayStarted) / 1000,
      totalSeconds: (reached - started) / 1000,
    };
  } catch (err) {
    // Nothing that looks like a restore stays: the server stopped, what this run made removed.
    await server?.stop('immediate');
    await fs.rm(staging, { recursive: true, force: true }).catch(() => undefined);
    if (existed) {
      for (const e of await fs.readdir(into).catch(() => [] as string[]))
        await fs.rm(path.join(into, e), { recursive: true, force: true }).catch(() => undefined);
    } else {
      await fs.rm(into, { recursive: true, force: true }).catch(() => undefined);
    }
    throw err;
  }
  const { proof } = outcome;
  await run.log(
    `restored ${outcome.set.label} into ${into}: recovery ${proof.state}` +
      `${proof.stopLine ? ` (${proof.stopLine})` : ''}; WAL ${proof.walReplayed.first ?? '-'} to ` +
      `${proof.walReplayed.last ?? '-'}; rows ${JSON.stringify(proof.rowCounts)}`,
  );
  return outcome;
}

/** Makes a directory's entries (a rename, a removed marker) durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Thrown when recovery ended before its target: the archive lacks WAL between the set and the target. */
export class RecoveryFailedError extends PermanentJobError {
  override name = 'RecoveryFailedError';
  constructor(message: string) {
    super(message, 'RECOVERY_FAILED');
  }
}

/** The commands that follow a restore, exact for this directory and port. */
export function nextStepsFor(
  o: Pick<ClusterRestoreOutcome, 'dataDir' | 'port' | 'running' | 'promoted'>,
  archiveCommand: string,
  database: string,
): string[] {
  const { dataDir: d, port } = o;
  const pgCtl = binPath('pg_ctl');
  const asPostgres = postgresUser() ? 'sudo -u postgres ' : '';
  const steps: string[] = [];
  if (!o.running) steps.push(`${asPostgres}${pgCtl} -D ${d} -l ${path.join(d, RESTORE_LOG)} start`);
  if (!o.promoted)
    steps.push(`${asPostgres}${pgCtl} -D ${d} promote   # ends recovery here: the server becomes a primary`);
  steps.push(
    `psql -h localhost -p ${port} -d ${database} -c "alter system set archive_mode = 'on'" ` +
      `-c "alter system set archive_command = '${archiveCommand.replace(/'/g, "''")}'"   # archiving was off`,
    `${asPostgres}${pgCtl} -D ${d} restart`,
    `point the application at localhost:${port} (another host: set listen_addresses and pg_hba.conf first)`,
    "set DATABASE_URL (or the target's url) to that server, then:",
    'pgmaint enqueue archive-check --wait',
    'pgmaint enqueue base-backup --wait',
  );
  return steps;
}
