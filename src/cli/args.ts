// Strict option parsing for the command table: an unknown flag or a stray argument is
// refused (exit 2), naming it and the flags the command knows.
import { parseArgs } from 'node:util';
import { UsageError } from '../core/errors.ts';

export interface OptionSpec {
  type: 'string' | 'boolean';
  default?: string;
  /** The value's name in --help: `--data JSON`. */
  value?: string;
  /** One line for `pgmaint <command> --help`. */
  help: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

/** The parsed values, typed from the specs: strings for string options, booleans for flags. */
export type Values<O extends OptionSpecs> = {
  [K in keyof O]?: O[K]['type'] extends 'boolean' ? boolean : string;
};

export interface Parsed<O extends OptionSpecs> {
  values: Values<O>;
  positionals: string[];
  /** --help or -h was given: the command's help is printed instead. */
  help: boolean;
}

/** node:util parseArgs, strict, with errors that say what to do instead. */
export function parseFlags<O extends OptionSpecs>(
  command: string,
  args: string[],
  specs: O,
  allowPositionals = false,
): Parsed<O> {
  const options: Record<string, { type: 'string' | 'boolean'; default?: string; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, spec] of Object.entries(specs)) options[name] = { type: spec.type, default: spec.default };
  let parsed: {
    values: Record<string, string | boolean | undefined>;
    positionals: string[];
    tokens: { kind: string; name?: string }[];
  };
  try {
    parsed = parseArgs({ args, options, allowPositionals, strict: true, tokens: true });
  } catch (err) {
    const message = (err as Error).message;
    const flag = /'(-{1,2}[^']+)'/.exec(message)?.[1];
    const known = Object.keys(specs).map((o) => `--${o}`);
    if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag) {
      const word = flag.replace(/^-+/, '').split('=')[0];
      // enqueue's answer is JSON already: a script that passes --json everywhere is told so.
      const hint =
        command !== 'enqueue'
          ? ''
          : word === 'json'
            ? '; enqueue prints its answer as JSON on stdout always, without --json'
            : `; payload fields go in --data, e.g. --data '{"${word}": …}'`;
      throw new UsageError(`${command}: unknown option ${flag} (known: ${known.join(', ') || 'none'})${hint}`);
    }
    if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL')
      throw new UsageError(`${command}: takes no arguments (${message.replace(/\. To specify.*$/, '')})`);
    throw new UsageError(`${command}: ${message}`);
  }
  // parseArgs keeps the last of a repeated value silently: `--data A --data B` would drop A.
  const given = parsed.tokens.flatMap((t) =>
    t.kind === 'option' && t.name && specs[t.name]?.type === 'string' ? [t.name] : [],
  );
  const twice = given.find((name, i) => given.indexOf(name) !== i);
  if (twice) throw new UsageError(`--${twice}: given more than once (${command} takes one)`);
  const { help, ...rest } = parsed.values;
  return { values: rest as Values<O>, positionals: parsed.positionals, help: help === true };
}
