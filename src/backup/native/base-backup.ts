// The native engine's base backup: pg_basebackup (WAL streamed in, backup manifest
// on) of a target's cluster into BACKUP_DIR/base/<target>/<label>/. It is written
// under a dot-name, verified with pg_verifybackup (tar format unpacked into a
// scratch directory first), and only then published by rename with pgmaint.json
// (LSNs, times, bytes, MB/s). A backup without pgmaint.json never counts.
// Phases: clear the directory, read the server, copy (pg_basebackup), verify, publish.
import fs from 'node:fs/promises';
import path from 'node:path';
import { backupDirOf } from '../../core/config.ts';
import { fileStamp, fsyncPath, treeSize, writeJsonAtomic } from '../../core/files.ts';
import { binPath, runProcess } from '../../core/proc.ts';
import { materializeDataDir, verifyDataDir } from '../base-backup-files.ts';
import { type BaseBackupManifest, baseDir } from '../catalog.ts';
import type { BaseBackupOptions, EngineRun } from '../engine.ts';
import { ensureWritableDir } from '../run-guard.ts';
import { parseLsn, parseSize, segmentName, segmentNumber } from '../wal.ts';

type Compression = BaseBackupManifest['compression'];
type Options = BaseBackupOptions & { compression: Compression };

/** What the server says of itself before the copy. */
interface ServerInfo {
  version: string;
  sysid: string;
  segmentSize: number;
  timeline: number;
}

/** What pg_basebackup reported while it copied. */
interface Copied {
  startLsn: string;
  stopLsn: string;
  timeline: number;
  stoppedAt: Date;
}

/** Takes, verifies and publishes one base backup; the caller holds the per-target lock. */
export async function takeNativeBaseBackup(run: EngineRun, raw: BaseBackupOptions) {
  const p: Options = { ...raw, compression: raw.compression ?? (raw.format === 'tar' ? 'lz4' : 'none') };
  const dir = await clearedDir(run);
  const started = new Date();
  const label = `${run.target.name}-${fileStamp(started)}`;
  const tmp = path.join(dir, `.${label}.partial`);
  const verifyDir = path.join(dir, `.${label}.verify`);
  try {
    const info = await readServer(run);
    await fs.mkdir(tmp, { recursive: true });
    const copied = await copy(run, p, info, label, tmp);
    const verifySeconds = await verify(run, p, path.join(tmp, 'data'), verifyDir);
    return await publish(run, p, { dir, tmp, label, started, info, copied, verifySeconds });
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.rm(verifyDir, { recursive: true, force: true });
    throw err;
  }
}

/** The target's base-backup directory, writable, without what interrupted runs left there. */
async function clearedDir(run: EngineRun): Promise<string> {
  const dir = baseDir(backupDirOf(run.config), run.target.name);
  await ensureWritableDir(dir);
  // Under the lock no other run writes here: every dot-name is an interrupted run's.
  for (const e of await fs.readdir(dir)) {
    if (!e.startsWith('.')) continue;
    await fs.rm(path.join(dir, e), { recursive: true, force: true });
    await run.log(`removed leftover ${e} from an interrupted run`);
  }
  return dir;
}

async function readServer(run: EngineRun): Promise<ServerInfo> {
  const { rows } = await run.pool.query<{ version: string; sysid: string; segsize: string; tli: number }>(
    `select current_setting('server_version') as version,
            (select system_identifier::text from pg_control_system()) as sysid,
            current_setting('wal_segment_size') as segsize, (select timeline_id from pg_control_checkpoint()) as tli`,
  );
  const r = rows[0]!;
  return { version: r.version, sysid: r.sysid, segmentSize: parseSize(r.segsize), timeline: r.tli };
}

/** pg_basebackup into tmp/data, reading its start and end points and its progress from stderr. */
async function copy(run: EngineRun, p: Options, info: ServerInfo, label: string, tmp: string): Promise<Copied> {
  const args = [
    '-D',
    path.join(tmp, 'data'),
    `--format=${p.format}`,
    '--wal-method=stream',
    `--checkpoint=${p.checkpoint}`,
    `--label=pgmaint ${label}`,
    '--manifest-checksums=CRC32C',
    '--progress',
    '--verbose',
    '--no-password',
  ];
  if (p.format === 'tar') args.push(`--compress=${compressSpec(p.compression, p.compressionLevel)}`);
  if (p.maxRate) args.push(`--max-rate=${p.maxRate}`);
  await run.log(
    `pg_basebackup of PostgreSQL ${info.version} (system ${info.sysid}), ${p.format} format, ${p.compression} ` +
      `compression, into ${tmp}`,
  );
  let startLsn: string | undefined;
  let stopLsn: string | undefined;
  let timeline = info.timeline;
  let stoppedAt: Date | undefined;
  let lastReport = 0;
  await runProcess(binPath('pg_basebackup'), args, {
    libpq: run.libpqSettings(),
    signal: run.signal,
    onStderrLine: (line) => {
      const start = /write-ahead log start point: ([0-9A-F]+\/[0-9A-F]+) on timeline (\d+)/.exec(line);
      if (start) {
        startLsn = start[1];
        timeline = Number(start[2]);
        void run.log(`checkpoint done; WAL start point ${startLsn} on timeline ${timeline}`).catch(() => undefined);
      }
      const end = /write-ahead log end point: ([0-9A-F]+\/[0-9A-F]+)/.exec(line);
      if (end) {
        stopLsn = end[1];
        stoppedAt = new Date();
      }
      const prog = /(\d+)\/(\d+) kB \((\d+)%\)/.exec(line);
      if (prog && Date.now() - lastReport > 2000) {
        lastReport = Date.now();
        void run
          .progress(
            5 + Number(prog[3]) * 0.7,
            `copied ${Math.round(Number(prog[1]) / 1024)} of ${Math.round(Number(prog[2]) / 1024)} MB`,
          )
          .catch(() => undefined);
      }
    },
  });
  if (!startLsn || !stopLsn || !stoppedAt)
    throw new Error('pg_basebackup finished without reporting its WAL start and end points');
  return { startLsn, stopLsn, timeline, stoppedAt };
}

/** pg_verifybackup of the copy (tar format unpacked into verifyDir first); returns the seconds it took. */
async function verify(run: EngineRun, p: Options, data: string, verifyDir: string): Promise<number> {
  await run.progress(78, 'verifying with pg_verifybackup');
  const verifyStarted = Date.now();
  const manifestPath = path.join(data, 'backup_manifest');
  if (p.format === 'plain') {
    await verifyDataDir(data, manifestPath, run.signal);
  } else {
    try {
      await materializeDataDir(data, 'tar', verifyDir, { signal: run.signal });
      await verifyDataDir(verifyDir, manifestPath, run.signal);
    } finally {
      await fs.rm(verifyDir, { recursive: true, force: true });
    }
  }
  const seconds = (Date.now() - verifyStarted) / 1000;
  await run.log(`pg_verifybackup: every file and the WAL match the manifest (${seconds.toFixed(1)} s)`);
  return seconds;
}

/** Writes pgmaint.json and renames the backup into place: from then on it counts. */
async function publish(
  run: EngineRun,
  p: Options,
  b: {
    dir: string;
    tmp: string;
    label: string;
    started: Date;
    info: ServerInfo;
    copied: Copied;
    verifySeconds: number;
  },
) {
  await run.progress(95, 'publishing');
  const { info, copied } = b;
  const segmentSize = info.segmentSize;
  const bytes = await treeSize(b.tmp);
  const sourceBytes = await manifestBytes(path.join(b.tmp, 'data', 'backup_manifest'));
  const finished = new Date();
  const copySeconds = Math.max((copied.stoppedAt.getTime() - b.started.getTime()) / 1000, 0.001);
  const manifest: BaseBackupManifest = {
    kind: 'pgmaint-base-backup',
    version: 1,
    label: b.label,
    target: run.target.name,
    format: p.format,
    compression: p.compression,
    systemIdentifier: info.sysid,
    serverVersion: info.version,
    timeline: copied.timeline,
    walSegmentSize: segmentSize,
    startLsn: copied.startLsn,
    stopLsn: copied.stopLsn,
    startWal: segmentName(copied.timeline, segmentNumber(parseLsn(copied.startLsn), segmentSize), segmentSize),
    // The end LSN points just past the last record; the segment holding it is the last needed.
    stopWal: segmentName(copied.timeline, segmentNumber(parseLsn(copied.stopLsn) - 1n, segmentSize), segmentSize),
    startedAt: b.started.toISOString(),
    stoppedAt: copied.stoppedAt.toISOString(),
    finishedAt: finished.toISOString(),
    durationMs: finished.getTime() - b.started.getTime(),
    bytes,
    sourceBytes,
    mbPerSecond: Math.round((sourceBytes / 1048576 / copySeconds) * 10) / 10,
    verified: { method: 'pg_verifybackup', seconds: b.verifySeconds },
    jobId: run.jobId,
  };
  await writeJsonAtomic(path.join(b.tmp, 'pgmaint.json'), manifest);
  const final = path.join(b.dir, b.label);
  await fs.rename(b.tmp, final);
  await fsyncPath(b.dir);
  await run.progress(
    100,
    `base backup ${b.label} verified: ${Math.round(bytes / 1048576)} MB on disk, ${manifest.mbPerSecond} MB/s`,
  );
  return { label: b.label, path: final, ...pick(manifest) };
}

/** The manifest fields a base-backup run reports. */
const RESULT_FIELDS = [
  'format',
  'compression',
  'startLsn',
  'stopLsn',
  'timeline',
  'startWal',
  'stopWal',
  'startedAt',
  'stoppedAt',
  'finishedAt',
  'durationMs',
  'bytes',
  'sourceBytes',
  'mbPerSecond',
] as const;

function pick(m: BaseBackupManifest) {
  const fields = Object.fromEntries(RESULT_FIELDS.map((k) => [k, m[k]])) as Pick<
    BaseBackupManifest,
    (typeof RESULT_FIELDS)[number]
  >;
  return { ...fields, verified: m.verified, verifySeconds: m.verified.seconds };
}

async function manifestBytes(manifestPath: string): Promise<number> {
  const m = JSON.parse(await fs.readFile(manifestPath, 'utf8')) as { Files?: { Size: number }[] };
  return (m.Files ?? []).reduce((a, f) => a + f.Size, 0);
}

/** pg_basebackup's --compress value: none, or client-side compression with an optional level. */
function compressSpec(compression: string, level: number | undefined): string {
  if (compression === 'none') return 'none';
  return `client-${compression}${level ? `:${level}` : ''}`;
}
