// What restore-cluster (and the drill, which runs it) refuses before it writes a byte,
// each naming the field and why: a directory that is not new, that is or holds the live
// data directory or the worker's own backups, a port in use, an unknown set, a time the
// recovery window does not cover. Also what a killed run left behind (docs/restore.md,
// "What is left behind"): its staging directory, or a directory still carrying the
// incomplete marker, which the retry stops and empties before it checks anything else.
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { backupDirOf, type Config, type TargetConfig } from '../core/config.ts';
import { type FieldIssue, PermanentJobError, RefusedError } from '../core/errors.ts';
import { binPath, runProcess } from '../core/proc.ts';
import { processAlive } from '../core/pid.ts';
import type { EngineCatalog, RestoreTarget } from './engine.ts';
import { describeTarget, resolvedPath, within } from './restore-dir.ts';

/** In the restored directory until the restore is proven; a directory holding it is not a finished restore. */
export const INCOMPLETE_MARKER = 'pgmaint-restore.incomplete';
/** The server log of the restored cluster (pg_ctl -l), in its directory. */
export const RESTORE_LOG = 'pgmaint-restore.log';
/** PostgreSQL's Unix socket goes into the restored directory: its path must fit (sun_path is 108 bytes). */
const MAX_INTO_LENGTH = 90;

/** Where the files are restored before they take the name asked for: a sibling, on the same filesystem. */
export const stagingPathOf = (into: string) =>
  path.join(path.dirname(into), `.${path.basename(into)}.pgmaint-restoring`);

/** What the request alone refuses (HTTP 400): the worker's own directories, a path too long. */
export function checkIntoAgainstConfig(into: string, config: Config, field = 'into'): FieldIssue[] {
  if (!path.isAbsolute(into)) return [{ path: field, message: 'must be an absolute path' }];
  const issues: FieldIssue[] = [];
  if (into.length > MAX_INTO_LENGTH)
    issues.push({
      path: field,
      message: `is ${into.length} characters long; at most ${MAX_INTO_LENGTH} (the server's Unix socket goes in it)`,
    });
  const own: [string, string][] = [];
  if (config.backupDir) own.push(['BACKUP_DIR', backupDirOf(config)]);
  for (const t of config.targets.values())
    if (t.walArchiveDir) own.push([`the WAL archive of target "${t.name}"`, t.walArchiveDir]);
  if (config.backups.scratchDir) own.push(['backups.scratchDir', config.backups.scratchDir]);
  const dir = path.resolve(into);
  for (const [what, p] of own) {
    const o = path.resolve(p);
    if (within(o, dir) || within(dir, o))
      issues.push({ path: field, message: `is or overlaps ${what} (${p}); restore into a new directory` });
  }
  return issues;
}

/** Refuses `into` when it is, holds or lies in the live data directory. */
export async function checkNotLive(into: string, live: string | undefined): Promise<void> {
  if (!live) return;
  const [dir, liveDir] = await Promise.all([resolvedPath(into), resolvedPath(live)]);
  if (within(liveDir, dir) || within(dir, liveDir))
    throw new RefusedError('into', `${into} is or overlaps the live data directory of the target (${live})`);
}

/**
 * Refuses `into` when it is, holds or lies in the live data directory, or is not a new directory;
 * a directory a killed restore left (staging, or the incomplete marker) is stopped and emptied first.
 */
export async function checkInto(
  into: string,
  live: string | undefined,
  onCleaned: (what: string) => Promise<void>,
): Promise<{ existed: boolean }> {
  await checkNotLive(into, live);
  const staging = stagingPathOf(into);
  if (await exists(staging)) {
    await stopServer(staging);
    await fs.rm(staging, { recursive: true, force: true });
    await onCleaned(`removed ${staging}, left by a restore that did not finish`);
  }
  const st = await fs.stat(into).catch(() => undefined);
  if (!st) return { existed: false };
  if (!st.isDirectory()) throw new RefusedError('into', `${into} exists and is not a directory`);
  let entries = await fs.readdir(into);
  if (entries.includes(INCOMPLETE_MARKER)) {
    await stopServer(into);
    for (const e of entries) await fs.rm(path.join(into, e), { recursive: true, force: true });
    await onCleaned(`emptied ${into}: a restore that did not finish left it (${INCOMPLETE_MARKER})`);
    entries = [];
  }
  if (entries.length)
    throw new RefusedError(
      'into',
      `${into} is not empty (${entries.length} entries, e.g. ${entries.slice(0, 3).join(', ')}); ` +
        'give a new directory',
    );
  return { existed: true };
}

/**
 * Claims `into` for this process (`.<name>.pgmaint-lock` beside it): a second restore into it while this one
 * runs is refused; a claim whose process is gone (a killed run) is taken over. Returns the release.
 */
export async function claimInto(into: string): Promise<() => Promise<void>> {
  const lock = path.join(path.dirname(into), `.${path.basename(into)}.pgmaint-lock`);
  await fs.mkdir(path.dirname(into), { recursive: true });
  for (let tries = 0; ; tries++) {
    try {
      await fs.writeFile(lock, String(process.pid), { flag: 'wx' });
      return () => fs.rm(lock, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 0) throw err;
    }
    const pid = Number(await fs.readFile(lock, 'utf8').catch(() => '0'));
    if (pid && pid !== process.pid && processAlive(pid))
      throw new RefusedError('into', `another restore into ${into} is running (process ${pid}); wait for it`);
    await fs.rm(lock, { force: true });
  }
}

/** Refuses a port something already listens on (localhost). */
export async function checkPortFree(port: number): Promise<void> {
  const free = await new Promise<boolean>((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
  if (!free) throw new RefusedError('port', `${port} is already in use on localhost; give a free port`);
}

/** Refuses a set the catalog does not list (or that is not usable), and a time outside the recovery window. */
export function checkCatalog(
  catalog: EngineCatalog,
  target: RestoreTarget,
  set: string | undefined,
  targetName: string,
): void {
  const usable = catalog.sets.filter((s) => s.usable);
  if (set) {
    const found = usable.find((s) => s.label === set);
    if (!found)
      throw new RefusedError(
        'set',
        `no verified base backup or set "${set}" (${usable.length} listed` +
          `${usable[0] ? `, newest ${usable[0].label}` : ''}; pgmaint backups lists them)`,
      );
    if (typeof target === 'object' && 'time' in target && Date.parse(found.stoppedAt) >= Date.parse(target.time))
      throw new RefusedError('set', `${set} stopped at ${found.stoppedAt}, not before ${describeTarget(target)}`);
  }
  // Its own stable code (the drill's alerts name it), not a refusal of the request.
  if (!usable.length)
    throw new PermanentJobError(
      `no verified base backup or set of target "${targetName}"; run base-backup first`,
      'NO_BASE_BACKUP',
    );
  if (typeof target !== 'object' || !('time' in target) || !catalog.windowMeasured) return;
  const { earliest, latest } = catalog.recoveryWindow;
  const t = Date.parse(target.time);
  // No window (a gap after every set): recovery itself says where the archive ends.
  if (!earliest || !latest) return;
  if (t < Date.parse(earliest) || t > Date.parse(latest))
    throw new RefusedError(
      'time',
      `${target.time} is outside the recovery window (${earliest} to ${latest}); pgmaint backups shows it`,
    );
}

/** The archive_command a promoted restore needs to archive again, as the target's engine archives. */
export function archiveCommandOf(t: TargetConfig): string {
  if (t.backup.engine === 'pgbackrest') {
    const config = t.backup.configFile ? ` --config=${t.backup.configFile}` : '';
    return `pgbackrest${config} --stanza=${t.backup.stanza ?? t.name} archive-push %p`;
  }
  return `test ! -f ${t.walArchiveDir}/%f && cp %p ${t.walArchiveDir}/%f`;
}

const exists = (p: string) =>
  fs.stat(p).then(
    () => true,
    () => false,
  );

/** Stops a server a killed restore left running on `dataDir` (immediate: its files are thrown away). */
async function stopServer(dataDir: string): Promise<void> {
  if (!(await exists(path.join(dataDir, 'postmaster.pid')))) return;
  const st = await fs.stat(dataDir);
  await runProcess(binPath('pg_ctl'), ['-D', dataDir, '-m', 'immediate', '-w', '-t', '60', 'stop'], {
    uid: st.uid,
    gid: st.gid,
    cwd: '/',
  }).catch(() => undefined);
}
