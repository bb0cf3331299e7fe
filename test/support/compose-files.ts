// The compose files and Dockerfiles read the way Docker reads them, for the tests (there is
// no Docker engine here): YAML with anchors and merge keys, then variable interpolation of
// the values as the Compose specification defines it (`$$`, `${VAR}`, `${VAR:-default}`,
// `${VAR:?error}`, …), then override files merged over the first. Dockerfiles: instructions
// with their continuation lines joined, and the Debian packages each image installs.
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

export const root = path.resolve(import.meta.dirname, '../..');

type Env = Record<string, string | undefined>;

/** Interpolates one value; throws like `docker compose` does, naming the variable. */
export function interpolate(value: string, env: Env): string {
  return value.replace(
    /\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*)|)/g,
    (whole, escaped, braced, op, arg, bare, offset: number) => {
      if (escaped) return '$';
      const name = braced ?? bare;
      if (!name) throw new Error(`invalid interpolation format at "${value.slice(offset, offset + 20)}"`);
      const v = env[name];
      const unset = v === undefined || (op?.startsWith(':') && v === '');
      switch (op?.replace(':', '')) {
        case undefined:
          return v ?? '';
        case '-':
          return unset ? arg : v!;
        case '+':
          return unset ? '' : arg;
        case '?':
          if (unset) throw new Error(`required variable ${name} is missing a value: ${arg}`);
          return v!;
        default:
          throw new Error(`invalid interpolation format in ${whole}`);
      }
    },
  );
}

function interpolateTree(node: unknown, env: Env): unknown {
  if (typeof node === 'string') return interpolate(node, env);
  if (Array.isArray(node)) return node.map((n) => interpolateTree(n, env));
  if (node && typeof node === 'object')
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, interpolateTree(v, env)]));
  return node;
}

export interface ComposeService {
  image?: string;
  build?: string | { context: string; dockerfile?: string };
  user?: string;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] };
  profiles?: string[];
  [key: string]: unknown;
}

export interface Compose {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
  [key: string]: unknown;
}

/** A volume entry's target path (short syntax: source:target[:mode]). */
export const volumeTarget = (v: string) => v.split(':')[1]!;

// Compose's merge rules for the keys these files use: sequences that are one value are
// replaced, volumes are merged by target path, mappings key by key.
const REPLACED = new Set(['command', 'entrypoint', 'user', 'image', 'restart', 'healthcheck', 'build', 'profiles']);

function mergeService(base: ComposeService, over: ComposeService): ComposeService {
  const out: ComposeService = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const prev = out[key];
    if (REPLACED.has(key) || prev === undefined) out[key] = value;
    else if (key === 'volumes') {
      const kept = (prev as string[]).filter(
        (v) => !(value as string[]).some((w) => volumeTarget(w) === volumeTarget(v)),
      );
      out.volumes = [...kept, ...(value as string[])];
    } else if (Array.isArray(prev)) out[key] = [...prev, ...(value as unknown[])];
    else out[key] = { ...(prev as object), ...(value as object) };
  }
  return out;
}

/** Parses the compose files (the first, then the overrides), interpolated with `env`. */
export function readCompose(files: string[], env: Env): Compose {
  const docs = files.map(
    (f) => interpolateTree(YAML.parse(fs.readFileSync(path.join(root, f), 'utf8'), { merge: true }), env) as Compose,
  );
  const [first, ...overrides] = docs;
  const out: Compose = { ...first!, services: { ...first!.services }, volumes: { ...first!.volumes } };
  for (const doc of overrides) {
    for (const [name, svc] of Object.entries(doc.services))
      out.services[name] = out.services[name] ? mergeService(out.services[name], svc) : svc;
    Object.assign(out.volumes!, doc.volumes);
  }
  return out;
}

export interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

const KEYWORDS = new Set([
  'FROM',
  'RUN',
  'CMD',
  'LABEL',
  'EXPOSE',
  'ENV',
  'ADD',
  'COPY',
  'ENTRYPOINT',
  'VOLUME',
  'USER',
  'WORKDIR',
  'ARG',
  'ONBUILD',
  'STOPSIGNAL',
  'HEALTHCHECK',
  'SHELL',
]);

/** A Dockerfile's instructions: comments dropped, continuation lines joined; throws on an unknown instruction. */
export function parseDockerfile(file: string): Instruction[] {
  const lines = fs.readFileSync(path.join(root, file), 'utf8').split('\n');
  const out: Instruction[] = [];
  let pending: Instruction | undefined;
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line.startsWith('#') || (!line && !pending)) return;
    const continued = line.endsWith('\\');
    const text = continued ? line.slice(0, -1).trim() : line;
    if (pending) pending.args += ` ${text}`;
    else {
      const m = /^([A-Za-z]+)\s+(.*)$/.exec(text);
      if (!m || !KEYWORDS.has(m[1]!.toUpperCase())) throw new Error(`${file}:${i + 1}: not an instruction: ${raw}`);
      pending = { keyword: m[1]!.toUpperCase(), args: m[2]!, line: i + 1 };
    }
    if (!continued) {
      out.push(pending!);
      pending = undefined;
    }
  });
  if (pending) throw new Error(`${file}: ends inside a continued ${pending.keyword}`);
  return out;
}

/** The packages `apt-get install` names in a Dockerfile's RUN instructions. */
export function aptPackages(instructions: Instruction[]): string[] {
  return instructions
    .filter((i) => i.keyword === 'RUN')
    .flatMap((i) => [...i.args.matchAll(/apt-get install ([^&;|]*)/g)])
    .flatMap((m) => m[1]!.split(/\s+/).filter((w) => w && !w.startsWith('-')));
}
