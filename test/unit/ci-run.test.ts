// .ci/run on a fresh Debian 12 machine: what it checks for is run as it is written, on a
// PATH with nothing on it, and it must ask Debian for everything the suite then runs
// (npm for the Node versions, procps, iproute2, the services) before it uses any of it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '../..');
const ci = fs.readFileSync(path.join(root, '.ci/run'), 'utf8');

/** The lines of .ci/run that decide what to install, ending with the list they decided on. */
function whatItInstalls(pathDirs: string[]): string[] {
  const start = ci.indexOf('need=()\n');
  const end = ci.search(/^if \[ \$\{#need\[@\]\} -gt 0 \]/m);
  expect(start, 'need=() in .ci/run').toBeGreaterThanOrEqual(0);
  expect(end).toBeGreaterThan(start);
  const script = `set -euo pipefail\n${ci.slice(start, end)}\necho "\${need[*]}"\n`;
  const bash = spawnSync('/bin/bash', ['-c', script], { env: { PATH: pathDirs.join(':') }, encoding: 'utf8' });
  expect(bash.status, bash.stderr).toBe(0);
  return bash.stdout.trim().split(/\s+/).filter(Boolean);
}

/** Every command the tests, jobs, scripts and benchmarks start by name, and what brings it on Debian 12. */
const BROUGHT_BY: Record<string, string> = {
  // Debian's required packages and the checkout itself.
  sh: 'base',
  '/bin/bash': 'base',
  '/bin/sh': 'base',
  chown: 'base',
  id: 'base',
  sync: 'base',
  du: 'base',
  cp: 'base',
  tar: 'base',
  nice: 'base',
  mount: 'base',
  umount: 'base',
  git: 'base',
  ps: 'procps',
  pkill: 'procps',
  ip: 'iproute2',
  ss: 'iproute2',
  'redis-server': 'redis-server',
  'redis-cli': 'redis-server',
  'redis-benchmark': 'redis-server',
  pgbackrest: 'pgbackrest',
  openssl: 'openssl',
};

function sources(dir: string): string[] {
  return fs
    .readdirSync(path.join(root, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.(ts|mjs|js)$/.test(f))
    .map((f) => path.join(root, dir, f));
}

describe('.ci/run on a fresh Debian 12 machine', () => {
  it('installs what it lacks: npm, procps (ps, pkill), iproute2 (ip, ss) and the services, before using them', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'ci-run-'));
    try {
      // Nothing on PATH: every package the suite needs is asked for (PostgreSQL is looked up by its own path).
      const fresh = whatItInstalls([empty]);
      for (const pkg of [
        'npm',
        'procps',
        'iproute2',
        'openssl',
        'redis-server',
        'chromium',
        'lz4',
        'zstd',
        'pgbackrest',
      ])
        expect(fresh, `on an empty PATH .ci/run installs ${pkg}`).toContain(pkg);
      expect(new Set(fresh).size, 'each package once').toBe(fresh.length);
      // With ps, pkill, ip, ss and npm all there (this machine), none of their packages is asked for.
      const here = (process.env.PATH ?? '').split(':').filter(Boolean);
      const onThisMachine = ['ps', 'pkill', 'ip', 'ss', 'npm'].every((c) =>
        here.concat('/usr/sbin', '/sbin').some((d) => fs.existsSync(path.join(d, c))),
      );
      if (onThisMachine) {
        const installed = whatItInstalls([...here, '/usr/sbin', '/sbin']);
        for (const pkg of ['npm', 'procps', 'iproute2']) expect(installed).not.toContain(pkg);
      }
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
    // Debian's packages come first; npm is used only after them.
    expect(ci.indexOf('apt-get install')).toBeGreaterThan(0);
    expect(ci.indexOf('apt-get install')).toBeLessThan(ci.search(/&& npm install /));
  });

  it('every command the code and tests start by name is brought by the base system or by what .ci/run installs', () => {
    const started = new Set<string>();
    for (const file of ['src', 'test', 'jobs', 'scripts', 'bench', 'bin'].flatMap(sources)) {
      const text = fs.readFileSync(file, 'utf8');
      for (const m of text.matchAll(/\b(?:execFileSync|execFile|spawnSync|spawn|runProcess|execSync)\(\s*'([^']+)'/g))
        started.add(m[1]!);
    }
    expect(started.size).toBeGreaterThan(5);
    for (const command of started) {
      const pkg = BROUGHT_BY[command];
      expect(pkg, `${command}: which Debian package brings it? (add it to .ci/run and to this table)`).toBeDefined();
      if (pkg === 'base') continue;
      // A check of this command, or of another the same package brings, asks for the package.
      const siblings = Object.keys(BROUGHT_BY).filter((c) => BROUGHT_BY[c] === pkg);
      const checkLine = ci
        .split('\n')
        .find((l) => siblings.some((c) => l.includes(`command -v ${c}`)) && l.includes(`need+=(${pkg})`));
      expect(checkLine, `${command}: .ci/run checks for it and installs ${pkg}`).toBeDefined();
    }
  });
});
