// pgBackRest as the physical-backup engine of a target: pgmaint runs its commands
// (backup, verify, check, info, restore, expire) and reads their answers; the
// repository, its encryption and its retention by sets are pgBackRest's. Commands run
// as the PostgreSQL OS user when we are root, as pgBackRest expects.
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import type { TargetConfig } from '../core/config.ts';
import { PermanentJobError } from '../core/errors.ts';
import { postgresUser } from '../core/local-postgres.ts';
import { parseJsonExact } from '../core/json.ts';
import { runProcess } from '../core/proc.ts';
import type { Refusal } from './manifest-checks.ts';
import { pgbackrestSetLabel, walSegmentName } from './names.ts';

export interface PgbackrestSet {
  label: string;
  type: 'full' | 'diff' | 'incr';
  /** The set this one depends on (diff and incr), or null for a full backup. */
  prior: string | null;
  startedAt: string;
  stoppedAt: string;
  durationSeconds: number;
  startLsn: string;
  stopLsn: string;
  /** First and last WAL segment the set needs to be consistent. */
  startWal: string;
  stopWal: string;
  /** Size of the cluster as backed up, and of this set in the repository (compressed, only its changes). */
  bytes: number;
  repositoryBytes: number;
  /** pgBackRest flagged a page checksum error while copying. */
  error: boolean;
}

export interface PgbackrestInfo {
  stanza: string;
  status: { code: number; message: string };
  cipher: string;
  systemId: string | null;
  /** Oldest and newest WAL segment in the repository's archive. */
  archive: { min: string; max: string } | null;
  /** Newest first, like the native catalog. */
  sets: PgbackrestSet[];
  /** Sets (or an archive range) whose names fail their checks: never listed, expired nor restored. */
  refused: Refusal[];
}

/** What `verify --output=text --verbose` said of the repository and of each set. */
export interface VerifyVerdict {
  ok: boolean;
  status: string;
  sets: { label: string; status: string; detail: string }[];
  archive: string[];
  output: string;
}

/** A set as `pgbackrest info --output=json` lists it; only what pgmaint reads is checked. */
const rawSet = z
  .object({
    label: pgbackrestSetLabel,
    type: z.enum(['full', 'diff', 'incr']),
    prior: pgbackrestSetLabel.nullable(),
    error: z.boolean().optional(),
    archive: z.object({ start: walSegmentName, stop: walSegmentName }).loose(),
    lsn: z.object({ start: z.string(), stop: z.string() }).loose(),
    timestamp: z.object({ start: z.number().int(), stop: z.number().int() }).loose(),
    info: z
      .object({
        size: z.number(),
        delta: z.number(),
        repository: z.object({ size: z.number(), delta: z.number() }).loose(),
      })
      .loose(),
  })
  .loose();

function toSet(b: z.output<typeof rawSet>): PgbackrestSet {
  const iso = (t: number) => new Date(t * 1000).toISOString();
  return {
    label: b.label,
    type: b.type,
    prior: b.prior,
    startedAt: iso(b.timestamp.start),
    stoppedAt: iso(b.timestamp.stop),
    durationSeconds: b.timestamp.stop - b.timestamp.start,
    startLsn: b.lsn.start,
    stopLsn: b.lsn.stop,
    startWal: b.archive.start,
    stopWal: b.archive.stop,
    bytes: b.info.size,
    repositoryBytes: b.info.repository.delta,
    error: Boolean(b.error),
  };
}

interface RawStanza {
  name: string;
  status: { code: number; message: string };
  cipher: string;
  db?: { 'system-id': string }[];
  archive?: { min: string | null; max: string | null }[];
  backup?: unknown[];
}

/**
 * What `pgbackrest info --output=json` says of one stanza. Its system-id is a 64-bit integer: kept
 * exact, as text. What it says is data: a label becomes an argument (--set=) and a lock key, a
 * segment name a comparison; each passes its validator first, or is refused by name.
 */
export function parseInfo(json: string, stanza: string): PgbackrestInfo {
  const stanzas = parseJsonExact<RawStanza[]>(json, ['system-id']);
  const s = stanzas.find((x) => x.name === stanza);
  if (!s) throw new Error(`pgbackrest info: no stanza "${stanza}"`);
  const refused: Refusal[] = [];
  const where = `pgbackrest info (stanza ${stanza})`;
  const archives = (s.archive ?? []).filter((a) => a.min && a.max);
  const badRange = archives.find(
    (a) => !walSegmentName.safeParse(a.min).success || !walSegmentName.safeParse(a.max).success,
  );
  if (badRange) {
    refused.push({
      object: `${where}: archive`,
      reason: `min/max ${JSON.stringify(badRange).slice(0, 120)}: must be WAL segment names`,
    });
  }
  const sets: PgbackrestSet[] = [];
  for (const raw of s.backup ?? []) {
    const parsed = rawSet.safeParse(raw);
    if (parsed.success) sets.push(toSet(parsed.data));
    else {
      const label = (raw as { label?: unknown } | null)?.label;
      const issue = parsed.error.issues[0]!;
      refused.push({
        object: `${where}: set ${JSON.stringify(label)?.slice(0, 80) ?? 'without a label'}`,
        reason: `${issue.path.join('.') || 'set'}: ${issue.message}`,
      });
    }
  }
  return {
    stanza: s.name,
    status: s.status,
    cipher: s.cipher,
    systemId: s.db?.at(-1) ? String(s.db.at(-1)!['system-id']) : null,
    archive:
      archives.length && !badRange
        ? {
            min: archives.map((a) => a.min!).sort()[0]!,
            max: archives
              .map((a) => a.max!)
              .sort()
              .at(-1)!,
          }
        : null,
    sets: sets.reverse(),
    refused,
  };
}

export class Pgbackrest {
  readonly stanza: string;

  constructor(private readonly target: Pick<TargetConfig, 'name' | 'backup'>) {
    if (target.backup.engine !== 'pgbackrest' || !target.backup.stanza) {
      throw new PermanentJobError(`target ${target.name}: backup.engine is not "pgbackrest" with a stanza`, 'ENGINE');
    }
    this.stanza = target.backup.stanza;
  }

  /**
   * Runs `pgbackrest <command>` for this target's stanza. A backup never expires anything by
   * itself (--no-expire-auto, whatever repoN-retention-* say): sets and WAL go only through
   * prune-backups, under its recovery-window and drill-lock guards.
   */
  run(args: string[], opts: { signal?: AbortSignal; onStderrLine?: (line: string) => void } = {}) {
    const config = this.target.backup.configFile ? [`--config=${this.target.backup.configFile}`] : [];
    const noExpiry = args[0] === 'backup' ? ['--no-expire-auto'] : [];
    return runProcess('pgbackrest', [...config, `--stanza=${this.stanza}`, ...args, ...noExpiry], {
      ...postgresUser(),
      cwd: '/',
      // pgBackRest's options given as PGBACKREST_* variables (the repository's key and
      // cipher pass may be among them) reach pgBackRest, and no other child.
      pgbackrestOptions: true,
      signal: opts.signal,
      onStderrLine: opts.onStderrLine,
    });
  }

  async info(signal?: AbortSignal): Promise<PgbackrestInfo> {
    const { stdout } = await this.run(['info', '--output=json'], { signal });
    return parseInfo(stdout, this.stanza);
  }

  /**
   * Verifies the repository. pgBackRest 2.45 verifies every set and the archive
   * (it has no --set); the caller reads its set's line from the verdict.
   */
  async verify(signal?: AbortSignal): Promise<VerifyVerdict> {
    const { stdout } = await this.run(['verify', '--output=text', '--verbose'], { signal });
    const status = /^status: (\S+)/m.exec(stdout)?.[1] ?? 'unknown';
    const sets = [...stdout.matchAll(/^\s+backup: (\S+), status: (\S+), (.*)\n\s+(.*)$/gm)].map((m) => ({
      label: m[1]!,
      status: m[2]!,
      detail: `${m[3]}; ${m[4]}`,
    }));
    const archive = [...stdout.matchAll(/^\s+archiveId: (.*)\n\s+(.*)$/gm)].map((m) => `${m[1]}; ${m[2]}`);
    return { ok: status === 'ok', status, sets, archive, output: stdout };
  }

  /** Waits until the repository's archive holds `segment` (or a later one). */
  async waitForArchived(segment: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const max = (await this.info(signal)).archive?.max;
      if (max && max.slice(8) >= segment.slice(8)) return;
      if (Date.now() > deadline)
        throw new Error(`not in the repository after ${timeoutMs / 1000} s (newest: ${max ?? 'none'})`);
      await sleep(500, undefined, { signal });
    }
  }

  /**
   * Restores a set into an empty directory: to a time, to a restore point (name) or to the end of the
   * archive (default). Only pgPath is written (never the live data directory, which --pg1-path replaces);
   * the repository is only read. The restore_command it writes fetches WAL with archive-get.
   */
  async restore(o: {
    set: string;
    type: 'time' | 'name' | 'default';
    target?: string;
    targetAction?: 'promote' | 'pause' | 'shutdown';
    pgPath: string;
    signal?: AbortSignal;
  }): Promise<void> {
    await this.run(
      [
        'restore',
        `--set=${o.set}`,
        `--type=${o.type}`,
        ...(o.target === undefined ? [] : [`--target=${o.target}`]),
        // pgBackRest takes a target action only with a target.
        ...(o.type === 'default' ? [] : [`--target-action=${o.targetAction ?? 'promote'}`]),
        `--pg1-path=${o.pgPath}`,
      ],
      { signal: o.signal },
    );
  }

  /** The restore_command a scratch instance uses to read WAL from the repository. */
  restoreCommand(): string {
    const config = this.target.backup.configFile ? ` --config=${this.target.backup.configFile}` : '';
    return `pgbackrest${config} --stanza=${this.stanza} archive-get %f "%p"`;
  }
}
