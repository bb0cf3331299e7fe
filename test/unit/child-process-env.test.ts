import fs from 'node:fs';
import os from 'node:os';
import { childEnv, runPipeline, runProcess } from '../../src/core/proc.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

describe('the environment of child processes', () => {
  const ours = {
    ADMIN_TOKEN: 'tok',
    DATABASE_URL: 'postgres://u:pw@h/db',
    PGPASSWORD: 'pw',
    AWS_SECRET_ACCESS_KEY: 's3',
    PGMAINT_BACKUP_KEY: 'key',
    PGSSLROOTCERT: '/etc/ca.pem',
    PGBACKREST_REPO1_CIPHER_PASS: 'cipher',
    LC_ALL: 'C.UTF-8',
    HOME: '/home/pgmaint',
  };
  let saved: Record<string, string | undefined>;
  beforeAll(() => {
    saved = Object.fromEntries(Object.keys(ours).map((k) => [k, process.env[k]]));
    Object.assign(process.env, ours);
  });
  afterAll(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('is an allow-list: PATH, locale, libpq variables; PGBACKREST_* for pgBackRest; HOME only as us', () => {
    const env = childEnv({ PGAPPNAME: 'pgmaint/x' });
    expect(env).toMatchObject({
      PATH: process.env.PATH,
      LC_ALL: 'C.UTF-8',
      PGSSLROOTCERT: '/etc/ca.pem',
      HOME: '/home/pgmaint',
    });
    expect(env.PGAPPNAME).toBe('pgmaint/x');
    for (const name of ['ADMIN_TOKEN', 'DATABASE_URL', 'PGPASSWORD', 'AWS_SECRET_ACCESS_KEY', 'PGMAINT_BACKUP_KEY'])
      expect(env, name).not.toHaveProperty(name);
    expect(env).not.toHaveProperty('PGBACKREST_REPO1_CIPHER_PASS');
    expect(childEnv({}, { pgbackrestOptions: true }).PGBACKREST_REPO1_CIPHER_PASS).toBe('cipher');
    expect(childEnv({}, { uid: (process.getuid?.() ?? 0) + 4242 })).not.toHaveProperty('HOME');
    expect(() => childEnv({ PGPASSWORD: 'pw' })).toThrow(/PGPASSWORD never goes into a child process/);
  });

  const libpq = { env: { PGUSER: 'u' }, password: 'a:b\\c' };
  const show = 'echo "$PGPASSFILE"; stat -c %a "$PGPASSFILE"; cat "$PGPASSFILE"; echo "[$PGPASSWORD]"';

  it('hands a password over in a mode-0600 passfile of the child, escaped, removed once it exits', async () => {
    const { stdout } = await runProcess('sh', ['-c', show], { libpq });
    const [file, mode, line, pgpassword] = stdout.trim().split('\n');
    expect(file).toMatch(new RegExp(`^${os.tmpdir()}/pgmaint-passfile-${process.pid}-[0-9a-f]{16}$`));
    expect([mode, line, pgpassword]).toEqual(['600', '*:*:*:*:a\\:b\\\\c', '[]']);
    expect(fs.existsSync(file!)).toBe(false);
    // A pipeline's stage too.
    const out: Buffer[] = [];
    await runPipeline(
      [
        { cmd: 'sh', args: ['-c', show], libpq },
        { cmd: 'cat', args: [] },
      ],
      {
        onStdout: (c) => out.push(c),
      },
    );
    const piped = Buffer.concat(out).toString().split('\n');
    expect(piped[1]).toBe('600');
    expect(fs.existsSync(piped[0]!)).toBe(false);
  });

  it('removes the passfile when the child fails, and when the run is aborted', async () => {
    let file = '';
    await expect(
      runProcess('sh', ['-c', 'echo "$PGPASSFILE"; exit 3'], { libpq, onStdoutLine: (l) => (file = l) }),
    ).rejects.toThrow(/sh exited with 3/);
    expect(file).toMatch(/pgmaint-passfile-/);
    expect(fs.existsSync(file)).toBe(false);

    const ac = new AbortController();
    const running = runProcess('sh', ['-c', 'echo "$PGPASSFILE"; exec sleep 30'], {
      libpq,
      signal: ac.signal,
      onStdoutLine: (l) => {
        file = l;
        expect(fs.existsSync(l)).toBe(true);
        ac.abort(new Error('aborted by the test'));
      },
    });
    await expect(running).rejects.toThrow(/killed by SIGKILL|aborted by the test/);
    expect(fs.existsSync(file)).toBe(false);
  });
});
