// A pgBackRest stanza for a local cluster (the tests' and the off-site demo's): a
// repository directory (posix) or an S3 bucket, a pgbackrest.conf, archive_command
// switched to archive-push, and stanza-create. The files belong to the PostgreSQL OS user, as pgBackRest needs.
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import type { PostgresInstance } from './devstack.ts';
import { chownTree, postgresUser } from '../core/local-postgres.ts';
import { runProcess } from '../core/proc.ts';
import type { S3Server } from './s3.ts';

export interface Stanza {
  stanza: string;
  configFile: string;
  repoPath: string;
  pgbackrest(args: string[]): Promise<{ stdout: string; stderr: string }>;
}

export async function createStanza(
  cluster: PostgresInstance,
  pool: pg.Pool,
  dir: string,
  opts: { stanza?: string; repoLines?: string[] } = {},
): Promise<Stanza> {
  const stanza = opts.stanza ?? 'main';
  const root = path.join(dir, 'pgbackrest');
  const repoPath = path.join(root, 'repo');
  for (const d of [root, repoPath, path.join(root, 'log'), path.join(root, 'lock'), path.join(root, 'spool')]) {
    fs.mkdirSync(d, { recursive: true });
  }
  const configFile = path.join(root, 'pgbackrest.conf');
  fs.writeFileSync(
    configFile,
    [
      '[global]',
      ...(opts.repoLines ?? [`repo1-path=${repoPath}`]),
      `log-path=${root}/log`,
      `lock-path=${root}/lock`,
      `spool-path=${root}/spool`,
      'log-level-console=warn',
      'log-level-file=off',
      'start-fast=y',
      'compress-type=lz4',
      '',
      `[${stanza}]`,
      `pg1-path=${cluster.dataDir}`,
      `pg1-port=${cluster.port}`,
      `pg1-socket-path=${cluster.socketDir}`,
      'pg1-user=postgres',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  chownTree(root, postgresUser());
  const owner = postgresUser();
  const pgbackrest = (args: string[]) =>
    runProcess('pgbackrest', [`--config=${configFile}`, `--stanza=${stanza}`, ...args], {
      ...owner,
      cwd: '/',
      pgbackrestOptions: true,
    });
  await pool.query(
    `alter system set archive_command = 'pgbackrest --config=${configFile} --stanza=${stanza} archive-push %p'`,
  );
  await pool.query('select pg_reload_conf()');
  await pgbackrest(['stanza-create']);
  return { stanza, configFile, repoPath, pgbackrest };
}

/** repo1 lines for an S3 repository on `s3`, its certificate verified, encrypted with `cipherPass`. */
export function s3RepoLines(s3: S3Server, cipherPass: string): string[] {
  return [
    'repo1-type=s3',
    'repo1-path=/pgbackrest',
    `repo1-s3-bucket=${s3.bucket}`,
    `repo1-s3-endpoint=${s3.host}`,
    `repo1-storage-port=${s3.port}`,
    `repo1-s3-region=${s3.region}`,
    `repo1-s3-key=${s3.accessKeyId}`,
    `repo1-s3-key-secret=${s3.secretAccessKey}`,
    'repo1-s3-uri-style=path',
    `repo1-storage-ca-file=${s3.caFile}`,
    'repo1-cipher-type=aes-256-cbc',
    `repo1-cipher-pass=${cipherPass}`,
  ];
}
