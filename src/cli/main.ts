// The pgmaint command line: finds the command in the table (commands.ts), parses its
// options strictly, picks the client (remote with PGMAINT_URL, else direct), runs it, and
// turns any error into one line on stderr and an exit code. Long-running roles (server,
// worker, demo) keep the process alive; the others print and exit.
import { ConfigError, exitCodeFor, UsageError } from '../core/errors.ts';
import { redact } from '../core/redact.ts';
import { parseFlags } from './args.ts';
import type { Client } from './client.ts';
import { type Command, COMMANDS } from './commands.ts';
import { RemoteClient, remoteSettings } from './remote.ts';
import { printable } from './terminal.ts';

const HELP_WORDS = new Set(['help', '--help', '-h']);
const COLUMN = 41;

/** `pgmaint enqueue <job> [--data JSON] [--wait]` */
function synopsis(c: Command): string {
  const options = Object.entries(c.options).map(([name, o]) =>
    o.type === 'boolean' ? `[--${name}]` : `[--${name} ${o.value ?? 'VALUE'}]`,
  );
  return ['pgmaint', c.name, ...(c.args ? [c.args] : []), ...options].join(' ');
}

function entry(c: Command): string {
  const [first, ...more] = c.summary.split('\n');
  const head = synopsis(c);
  const lines =
    head.length < COLUMN - 3
      ? [`  ${head.padEnd(COLUMN - 2)}${first}`]
      : [`  ${head}`, `${' '.repeat(COLUMN)}${first}`];
  return [...lines, ...more.map((l) => `${' '.repeat(COLUMN)}${l}`)].join('\n');
}

export function usage(): string {
  const section = (mode: Command['mode']) =>
    COMMANDS.filter((c) => c.mode === mode)
      .map(entry)
      .join('\n');
  return `pgmaint — maintenance job runner for PostgreSQL

Through the HTTP API when PGMAINT_URL is set, else directly on Redis and PostgreSQL:
${section('api')}

On this machine only (the database host; refused when PGMAINT_URL is set):
${section('local')}

Remote mode, e.g. on an engineer's laptop: PGMAINT_URL=https://pgmaint.example.com and
PGMAINT_TOKEN=<admin or viewer token> (PGMAINT_CA_FILE: the CA of its certificate; PGMAINT_TIMEOUT:
seconds per request, default 30). The server's tokens, roles and rate limit apply: a viewer token
reads, enqueue needs the admin token. No Redis or database credentials are needed.

Direct mode (PGMAINT_URL unset), on the database host: DATABASE_URL, REDIS_URL, … and the optional
PGMAINT_CONFIG file (docs/configuration.md). The commands read and write Redis and PostgreSQL
themselves: this BYPASSES the API's tokens, roles and rate limit.

Tables are for people; --json prints what the HTTP API answers, for scripts.
Exit codes: 0 done; 1 the run failed (enqueue --wait) or an unexpected error; 2 refused (usage,
configuration, payload); 3 Redis, PostgreSQL or the server did not answer; 4 the token may not do
this (a viewer token enqueueing); 5 the server did not accept the token (docs/api.md).
pgmaint <command> --help shows a command's options.`;
}

export function commandHelp(c: Command): string {
  const width = Math.max(0, ...Object.entries(c.options).map(([n, o]) => n.length + (o.value?.length ?? -1) + 3));
  const options = Object.entries(c.options).map(
    ([n, o]) => `  ${`--${n}${o.value ? ` ${o.value}` : ''}`.padEnd(width + 2)}  ${o.help}`,
  );
  const where =
    c.mode === 'api'
      ? `Remote (PGMAINT_URL): ${c.route.method} ${c.route.path} with PGMAINT_TOKEN, ${
          c.route.token === 'admin' ? 'the admin token' : 'a viewer or admin token'
        }.\nDirect (no PGMAINT_URL): on Redis and PostgreSQL, bypassing the API's tokens.`
      : 'Runs on this machine (the database host) with DATABASE_URL, REDIS_URL, …; refused when PGMAINT_URL is set.';
  return [
    `Usage: ${synopsis(c)}`,
    '',
    c.summary,
    ...(options.length ? ['', 'Options:', ...options] : []),
    '',
    where,
  ].join('\n');
}

async function openClient(): Promise<Client> {
  const remote = remoteSettings(process.env);
  if (remote) return new RemoteClient(remote);
  const { DirectClient } = await import('./direct.ts');
  return new DirectClient();
}

function unknownCommand(name: string): UsageError {
  return new UsageError(
    `unknown command "${name}" (commands: ${COMMANDS.map((c) => c.name).join(', ')}; pgmaint help shows usage)`,
  );
}

async function run(name: string, args: string[]): Promise<number> {
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) throw unknownCommand(name);
  const parsed = parseFlags(name, args, command.options, command.args !== undefined);
  if (parsed.help) {
    process.stdout.write(`${commandHelp(command)}\n`);
    return 0;
  }
  if (command.mode === 'local') {
    if (process.env.PGMAINT_URL)
      throw new ConfigError(
        `${name}: runs on this machine only, not through PGMAINT_URL; unset PGMAINT_URL to run it here`,
      );
    await command.run(parsed);
    return 0;
  }
  const client = await openClient();
  try {
    return await command.run(parsed, client);
  } finally {
    await client.close();
  }
}

/** A reader that closed the pipe (`pgmaint history --json | head`) has what it wanted: exit 0, no stack trace. */
function quietOnClosedPipe(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    process.stderr.write(`pgmaint: cannot write to stdout: ${printable(err.message)}\n`);
    process.exit(1);
  });
}

export async function main(argv: string[]): Promise<void> {
  quietOnClosedPipe();
  const [name, ...rest] = argv;
  try {
    if (name === undefined || HELP_WORDS.has(name)) {
      const command = COMMANDS.find((c) => c.name === rest[0]);
      if (rest[0] !== undefined && !command) throw unknownCommand(rest[0]);
      process.stdout.write(`${command ? commandHelp(command) : usage()}\n`);
      return;
    }
    process.exitCode = await run(name, rest);
  } catch (err) {
    exitWithError(err);
  }
}

/** One line on stderr and the exit code of the error's stable code (main's, and the workers/ entry points'). */
export function exitWithError(err: unknown): never {
  // A server's words may be in it (PGMAINT_URL): printed with their control characters escaped.
  process.stderr.write(`pgmaint: ${printable(oneLine(err))}\n`);
  if (process.env.LOG_LEVEL === 'debug' || process.env.LOG_LEVEL === 'trace')
    process.stderr.write(`${printable((err as Error).stack ?? '')}\n`);
  process.exit(exitCodeFor(err));
}

function oneLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return redact(message).replace(/\s*\n\s*/g, ' ');
}
