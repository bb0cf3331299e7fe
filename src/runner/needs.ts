// What a worker's machine has of the things jobs need (JobNeeds, declared in each job's
// definition), checked once when the worker starts. workers/backup.ts serves the jobs that
// need anything of the machine, workers/maintenance.ts those that need nothing (SQL only).
// A worker told which queues to serve refuses to start on one whose needs it lacks, naming
// the need and the variable; the all-jobs worker leaves such queues and says which (roles.ts).
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../core/config.ts';
import { BACKUP_ENGINES, type BackupEngineName } from '../core/config-schema.ts';
import { MAIN_TARGET } from '../core/constants.ts';
import { binPath } from '../core/proc.ts';
import type { AnyJobDefinition, JobNeeds } from './job-definition.ts';

export type NeedName = keyof JobNeeds;

export const NEED_NAMES: readonly NeedName[] = ['backupDir', 'walArchive', 'pgBinaries', 'engineTools', 'objectStore'];

/** What this machine is missing for a need: the variable that provides it, and what is wrong. */
interface Shortfall {
  variable: string;
  message: string;
}

/** A job this machine cannot run: which need, the variable, what is wrong, and why the job needs it. */
export interface Lack extends Shortfall {
  job: string;
  need: NeedName;
  why: string;
}

/**
 * The lacks in one line, jobs lacking the same thing together: `drop-expired-partitions needs
 * backupDir: set BACKUP_DIR (its partition archives are written there)`; with several jobs,
 * `backup, restore-check need backupDir: set BACKUP_DIR`.
 */
export function describeLacks(lacks: readonly Lack[]): string {
  const groups = new Map<string, Lack[]>();
  for (const lack of lacks) {
    const key = `${lack.need}\n${lack.message}`;
    groups.set(key, [...(groups.get(key) ?? []), lack]);
  }
  return [...groups.values()]
    .map(([first, ...more]) =>
      more.length
        ? `${[first!, ...more].map((l) => l.job).join(', ')} need ${first!.need}: ${first!.message}`
        : `${first!.job} needs ${first!.need}: ${first!.message} (${first!.why})`,
    )
    .join('; ');
}

/** A job that needs anything of the machine (workers/backup.ts serves these; workers/maintenance.ts the rest). */
export function needsMachine(def: AnyJobDefinition): boolean {
  return NEED_NAMES.some((need) => def.needs?.[need] !== undefined);
}

/**
 * The needs of these jobs that this machine lacks, under this configuration: a need whose
 * `when` is false, or that no configured thing calls for (no pgbackrest target, no
 * objectStore, no WAL directory), is not lacking.
 */
export async function lackingNeeds(
  defs: readonly AnyJobDefinition[],
  config: Config,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Lack[]> {
  // Each thing is probed once, however many jobs need it.
  const probed = new Map<string, Promise<unknown>>();
  const once = <T>(key: string, probe: () => Promise<T>): Promise<T> => {
    if (!probed.has(key)) probed.set(key, probe());
    return probed.get(key) as Promise<T>;
  };
  const lacks: Lack[] = [];
  for (const def of defs) {
    for (const need of NEED_NAMES) {
      const use = def.needs?.[need];
      if (!use || (use.when && !use.when(config))) continue;
      const shortfall =
        need === 'pgBinaries'
          ? await missingBinaries(def.needs!.pgBinaries!.tools, env, (file) => once(file, () => isExecutable(file)))
          : await once(need, () => PROBES[need](config, env));
      if (shortfall) lacks.push({ job: def.name, need, why: use.why, ...shortfall });
    }
  }
  return lacks;
}

type Probe = (config: Config, env: NodeJS.ProcessEnv) => Promise<Shortfall | undefined>;

const PROBES: Record<Exclude<NeedName, 'pgBinaries'>, Probe> = {
  async backupDir(config) {
    if (!config.backupDir) return { variable: 'BACKUP_DIR', message: 'set BACKUP_DIR' };
    const why = await whyNotWritable(config.backupDir);
    return why
      ? {
          variable: 'BACKUP_DIR',
          message: `BACKUP_DIR ${config.backupDir} ${why}: set BACKUP_DIR to a directory this process can write`,
        }
      : undefined;
  },

  async walArchive(config) {
    for (const t of config.targets.values()) {
      if (!BACKUP_ENGINES[t.backup.engine].readsWalArchiveDir || !t.walArchiveDir) continue;
      const variable = t.name === MAIN_TARGET ? 'WAL_ARCHIVE_DIR' : `targets.${t.name}.walArchiveDir`;
      const why = await whyNotReadable(t.walArchiveDir);
      if (why)
        return {
          variable,
          message:
            `${variable} ${t.walArchiveDir} (target ${t.name}) ${why}: set ${variable} to the directory its ` +
            'archive_command writes, readable here',
        };
    }
    return undefined;
  },

  async engineTools(config, env) {
    const users = new Map<BackupEngineName, string[]>();
    for (const t of config.targets.values())
      users.set(t.backup.engine, [...(users.get(t.backup.engine) ?? []), t.name]);
    for (const [engine, targets] of users) {
      const spec: { onPath: readonly string[]; install?: string } = BACKUP_ENGINES[engine];
      for (const tool of spec.onPath) {
        if (await onPath(tool, env.PATH)) continue;
        const several = targets.length > 1;
        return {
          variable: 'PATH',
          message:
            `${tool} is not on PATH (${several ? 'targets' : 'target'} ${targets.join(', ')} ` +
            `${several ? 'use' : 'uses'} the ${engine} engine): ${spec.install ?? `install ${tool}`}, or set PATH ` +
            'to include its directory',
        };
      }
    }
    return undefined;
  },

  async objectStore(config, env) {
    if (!config.objectStore) return undefined;
    const variables: [string, string][] = [
      ['objectStore.accessKeyIdEnv', config.objectStore.accessKeyIdEnv],
      ['objectStore.secretAccessKeyEnv', config.objectStore.secretAccessKeyEnv],
      ...(config.encryption
        ? [
            ['encryption.keyEnv', config.encryption.keyEnv] as [string, string],
            ...config.encryption.previousKeys.map(
              (k, i) => [`encryption.previousKeys.${i}.keyEnv`, k.keyEnv] as [string, string],
            ),
          ]
        : []),
    ];
    const unset = variables.find(([, name]) => !env[name]);
    return unset ? { variable: unset[1], message: `set ${unset[1]} (${unset[0]})` } : undefined;
  },
};

async function missingBinaries(
  tools: readonly string[],
  env: NodeJS.ProcessEnv,
  executable: (file: string) => Promise<boolean>,
): Promise<Shortfall | undefined> {
  const dir = path.dirname(binPath('pg_dump', env));
  const missing: string[] = [];
  for (const tool of tools) if (!(await executable(binPath(tool, env)))) missing.push(tool);
  if (!missing.length) return undefined;
  return {
    variable: 'PG_BINDIR',
    message:
      `${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not in ${dir}: set PG_BINDIR to the directory ` +
      "of PostgreSQL's binaries that holds them",
  };
}

async function isExecutable(file: string): Promise<boolean> {
  const st = await fs.stat(file).catch(() => undefined);
  if (!st?.isFile()) return false;
  return fs.access(file, constants.X_OK).then(
    () => true,
    () => false,
  );
}

async function onPath(tool: string, searchPath: string | undefined): Promise<boolean> {
  for (const dir of (searchPath ?? '').split(path.delimiter).filter(Boolean))
    if (await isExecutable(path.join(dir, tool))) return true;
  return false;
}

/** Why this process cannot write in `dir`, or create it (jobs make what is missing of it); undefined when it can. */
async function whyNotWritable(dir: string): Promise<string | undefined> {
  let probe = dir;
  for (;;) {
    const st = await fs.stat(probe).catch((err: NodeJS.ErrnoException) => err);
    if (st instanceof Error) {
      if (st.code !== 'ENOENT' && st.code !== 'ENOTDIR') return `cannot be read here, ${st.code}`;
      probe = path.dirname(probe); // the root exists, so this ends
      continue;
    }
    if (!st.isDirectory()) return `is not writable here, ${probe} is not a directory`;
    const denied = await fs.access(probe, constants.W_OK | constants.X_OK).then(
      () => undefined,
      (err: NodeJS.ErrnoException) => err.code,
    );
    return denied ? `is not writable here, ${probe}: ${denied}` : undefined;
  }
}

/** Why this process cannot list and read `dir`; undefined when it can. */
async function whyNotReadable(dir: string): Promise<string | undefined> {
  const st = await fs.stat(dir).catch((err: NodeJS.ErrnoException) => err);
  if (st instanceof Error) return `cannot be read here, ${st.code}`;
  if (!st.isDirectory()) return 'is not a directory';
  return fs.access(dir, constants.R_OK | constants.X_OK).then(
    () => undefined,
    (err: NodeJS.ErrnoException) => `cannot be read here, ${err.code}`,
  );
}
