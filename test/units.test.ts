// Unit tests of the pieces that decide things on their own: error classification and
// exit codes, sessions, libpq settings, the recovery window, the partition planner.
// (The history's flush-failure path runs against the test PostgreSQL: see the end.)
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { UnrecoverableError } from 'bullmq';
import { decryptStream, encryptStream } from '../src/backup/encryption.ts';
import { DiskFlush } from '../src/backup/base-backup-files.ts';
import { CopyRowCounter } from '../src/backup/partition-archive.ts';
import { parseInfo } from '../src/backup/pgbackrest.ts';
import { childEnv, runPipeline, runProcess } from '../src/core/proc.ts';
import { didYouMean } from '../src/core/suggest.ts';
import { DateTime } from 'luxon';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planMissing } from '../src/partitions/planner.ts';
import { type ListedBaseBackup, recoveryWindow } from '../src/backup/catalog.ts';
import { type ArchiveListing, parseSegmentName, segmentName } from '../src/backup/wal.ts';
import {
  classifyError,
  ConfigError,
  exitCodeFor,
  JobAbortedError,
  JobTimeoutError,
  PayloadError,
  PermanentJobError,
  ProcessError,
  ServiceUnavailableError,
  UsageError,
} from '../src/core/errors.ts';
import { parseJsonExact } from '../src/core/json.ts';
import { libpqSettings } from '../src/core/libpq.ts';
import { partitionPolicy } from '../src/core/partition-policy.ts';
import { Auth } from '../src/http/auth.ts';
import type { ParentInfo } from '../src/partitions/catalog.ts';
import { nextPeriod, partitionName, PeriodCalendar, periodStart } from '../src/partitions/periods.ts';
import { RunHistory, type RunStart } from '../src/runner/history.ts';
import { createHarness, type Harness } from './support/harness.ts';

const sqlError = (code: string) => Object.assign(new Error(`sqlstate ${code}`), { code });

describe('classifyError', () => {
  it.each([
    [new PermanentJobError('denied'), 'permanent'],
    [new UnrecoverableError('no'), 'permanent'],
    [new JobTimeoutError('slow'), 'timeout'],
    [new JobAbortedError('shutdown'), 'retryable'],
    [sqlError('40001'), 'retryable'], // serialization failure
    [sqlError('40P01'), 'retryable'], // deadlock
    [sqlError('55P03'), 'retryable'], // lock_timeout
    [sqlError('57P01'), 'retryable'], // admin shutdown
    [sqlError('08006'), 'retryable'], // connection failure (class 08)
    [sqlError('53300'), 'retryable'], // too many connections
    [sqlError('42P01'), 'permanent'], // undefined table
    [sqlError('42501'), 'permanent'], // insufficient privilege
    [sqlError('23505'), 'permanent'], // unique violation
    [sqlError('28P01'), 'permanent'], // bad password
    [sqlError('XX000'), 'retryable'], // internal error: give it its attempts
    [Object.assign(new Error('connect'), { code: 'ECONNREFUSED' }), 'retryable'],
    [new Error('Connection terminated unexpectedly'), 'retryable'],
    [new ProcessError('pg_dump exited with 1', 1, ''), 'retryable'],
    [new Error('something new'), 'retryable'],
  ])('%s → %s', (err, expected) => {
    expect(classifyError(err)).toBe(expected);
  });

  it('the CLI exit status comes from the stable code', () => {
    expect(exitCodeFor(new UsageError('x'))).toBe(2);
    expect(exitCodeFor(new ConfigError('x'))).toBe(2);
    expect(exitCodeFor(new PayloadError([{ path: 'a', message: 'b' }]))).toBe(2);
    expect(exitCodeFor(new ServiceUnavailableError('x'))).toBe(3);
    expect(exitCodeFor(sqlError('42P01'))).toBe(1);
    expect(exitCodeFor(new Error('x'))).toBe(1);
    expect(exitCodeFor('not an error')).toBe(1);
  });
});

describe('didYouMean', () => {
  const jobs = ['backup', 'base-backup', 'archive-check', 'vacuum-analyze', 'noop'];
  it('names the one known name near a typo, in letter case, an edit or two, or a prefix; else nothing', () => {
    expect(didYouMean('bakup', jobs)).toBe('; did you mean "backup"?');
    expect(didYouMean('Backup', jobs)).toBe('; did you mean "backup"?');
    expect(didYouMean('archive-chekc', jobs)).toBe('; did you mean "archive-check"?');
    expect(didYouMean('vacuum', jobs)).toBe('; did you mean "vacuum-analyze"?');
    expect(didYouMean('dryrun', ['target', 'dryRun'])).toBe('; did you mean "dryRun"?');
    expect(didYouMean('nosuch', jobs)).toBe('');
    expect(didYouMean('nop', ['noop', 'nope'])).toBe('; did you mean "noop"?');
    expect(didYouMean('xy', ['xz'])).toBe('');
  });
});

describe('sessions', () => {
  const admin = 'admin-token-0123456789abcdef';
  const viewer = 'viewer-token-0123456789abcdef';

  it('a session lasts 12 hours, cannot be forged or promoted, and ends when a token rotates', () => {
    const auth = new Auth(admin, viewer);
    const t0 = Date.UTC(2026, 0, 1);
    const cookie = auth.issueSession('viewer', t0);
    expect(auth.roleForSession(cookie, t0 + 1000)).toBe('viewer');
    expect(auth.roleForSession(cookie, t0 + 12 * 3600_000 - 1)).toBe('viewer');
    expect(auth.roleForSession(cookie, t0 + 12 * 3600_000 + 1)).toBeUndefined();
    expect(auth.roleForSession(cookie.replace(/^viewer/, 'admin'), t0 + 1000)).toBeUndefined();
    const [role, , mac] = cookie.split('.');
    expect(auth.roleForSession(`${role}.${t0 + 10 * 365 * 86400_000}.${mac}`, t0)).toBeUndefined();
    expect(new Auth(admin, 'rotated-viewer-token-0123456789').roleForSession(cookie, t0 + 1000)).toBeUndefined();
    expect(auth.roleForSession('garbage', t0)).toBeUndefined();
  });

  it('the cookie is HttpOnly and SameSite=Strict, Secure only over TLS, and cleared by the same name', () => {
    const auth = new Auth(admin, viewer);
    expect(auth.cookieHeader('admin', false)).toMatch(
      /^pgmaint_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict; Max-Age=43200$/,
    );
    expect(auth.cookieHeader('admin', true)).toMatch(/; Secure$/);
    expect(auth.clearCookieHeader()).toBe('pgmaint_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0');
  });
});

describe('libpqSettings', () => {
  const target = (url: string) => ({ name: 't', url, urlSource: 'X', poolSize: 1 });

  it('keeps the password, decoded, apart from the PG* variables', () => {
    expect(libpqSettings(target('postgres://app%40x:p%2Fss%3Aw0rd@db.example:6543/dairy'), 'pgmaint/backup/1')).toEqual(
      {
        env: {
          PGHOST: 'db.example',
          PGPORT: '6543',
          PGDATABASE: 'dairy',
          PGUSER: 'app@x',
          PGAPPNAME: 'pgmaint/backup/1',
        },
        password: 'p/ss:w0rd',
      },
    );
  });

  it('defaults port and database, unwraps IPv6, honours host= and sslmode= like libpq', () => {
    expect(libpqSettings(target('postgresql://[::1]/'))).toEqual({
      env: { PGHOST: '::1', PGPORT: '5432', PGDATABASE: 'postgres', PGAPPNAME: 'pgmaint' },
    });
    const socket = libpqSettings(target('postgres://u@localhost/db?host=/var/run/postgresql&sslmode=require'));
    expect(socket.env).toMatchObject({ PGHOST: '/var/run/postgresql', PGSSLMODE: 'require', PGUSER: 'u' });
    expect(socket.password).toBeUndefined();
  });
});

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

describe('recovery window', () => {
  const SEG = 16 * 1024 * 1024;
  const at = (iso: string) => new Date(iso);
  const archive = (segnos: number[], newestAt: string): ArchiveListing => ({
    dir: '/archive',
    segments: segnos.map((n, i) => ({
      name: segmentName(1, BigInt(n), SEG),
      timeline: 1,
      segno: BigInt(n),
      mtime: i === segnos.length - 1 ? at(newestAt) : at('2026-01-01T00:00:00Z'),
    })),
    files: [],
    historyFiles: [],
  });
  const base = (label: string, startSeg: number, stoppedAt: string): ListedBaseBackup =>
    ({
      path: `/base/${label}`,
      manifest: { label, startWal: segmentName(1, BigInt(startSeg), SEG), walSegmentSize: SEG, timeline: 1, stoppedAt },
    }) as unknown as ListedBaseBackup;

  it('runs from the oldest base backup with an unbroken chain to the newest archived segment', () => {
    const bases = [base('new', 8, '2026-01-03T00:00:00Z'), base('old', 2, '2026-01-01T06:00:00Z')];
    const w = recoveryWindow(bases, archive([2, 3, 4, 5, 6, 7, 8, 9], '2026-01-04T06:00:00Z'));
    expect(w).toEqual({
      earliest: '2026-01-01T06:00:00Z',
      latest: '2026-01-04T06:00:00.000Z',
      seconds: 3 * 86400,
      fromBaseBackup: 'old',
      brokenChains: [],
    });
    expect(parseSegmentName(segmentName(1, 0x1ffn, SEG), SEG)).toEqual({ timeline: 1, segno: 0x1ffn });
  });

  it('a gap breaks the older chain and names the missing segment; no archive, no window', () => {
    const bases = [base('new', 8, '2026-01-03T00:00:00Z'), base('old', 2, '2026-01-01T06:00:00Z')];
    const w = recoveryWindow(bases, archive([2, 3, 5, 6, 7, 8, 9], '2026-01-04T00:00:00Z'));
    expect(w.fromBaseBackup).toBe('new');
    expect(w.seconds).toBe(86400);
    expect(w.brokenChains).toEqual([{ label: 'old', missing: segmentName(1, 4n, SEG) }]);
    expect(recoveryWindow(bases, undefined)).toMatchObject({ earliest: null, seconds: 0, fromBaseBackup: null });
  });
});

describe('period calendar', () => {
  it('gives the boundaries luxon steps to, across DST, in both directions', () => {
    const now = DateTime.fromISO('2026-03-29T00:30:00Z');
    for (const zone of ['Europe/London', 'America/New_York', 'Asia/Dhaka']) {
      for (const interval of ['hour', 'day', 'week', 'month', 'quarter'] as const) {
        const cal = new PeriodCalendar(now);
        const current = periodStart(now.setZone(zone), interval);
        expect(cal.current(interval, zone), `${zone} ${interval}`).toBe(current.toMillis());
        // 40 periods back and ahead, stepped with the planner's own nextPeriod.
        let t = current;
        for (let i = 0; i < 40; i++) t = periodStart(t.minus({ milliseconds: 1 }), interval);
        const steps: number[] = [];
        for (let i = 0; i <= 80; i++, t = nextPeriod(t, interval)) steps.push(t.toMillis());
        for (const b of steps) expect(cal.isBoundary(interval, zone, b), `${zone} ${interval} ${b}`).toBe(true);
        expect(cal.isBoundary(interval, zone, steps[41]! + 60_000)).toBe(false);
        const at = steps.indexOf(current.toMillis());
        expect(cal.after(interval, zone, 5)).toBe(steps[at + 5]);
        expect(cal.countAhead(interval, zone, steps[at + 7]!)).toBe(6);
      }
    }
  });
});

describe('partition planner', () => {
  const policy = (over: object) =>
    partitionPolicy.parse({ table: 'sales.sale_order', column: 'date_order', interval: 'month', premake: 2, ...over });
  const parent = (parts: [string, string][], zone = 'UTC'): ParentInfo => ({
    schema: 'sales',
    table: 'sale_order',
    oid: 1,
    owner: 'o',
    keyType: 'timestamptz',
    partitions: parts.map(([from, to], i) => ({
      schema: 'sales',
      name: `p${i}`,
      isDefault: false,
      from: DateTime.fromISO(from, { zone }),
      to: DateTime.fromISO(to, { zone }),
      detachPending: false,
    })),
  });
  const iso = (p: { from: DateTime; to: DateTime }) => `${p.from.toISODate()}..${p.to.toISODate()}`;

  it('an empty parent gets the current period and premake ahead', () => {
    const { missing } = planMissing(parent([]), policy({}), DateTime.fromISO('2026-11-26T10:00:00Z'));
    expect(missing.map(iso)).toEqual(['2026-11-01..2026-12-01', '2026-12-01..2027-01-01', '2027-01-01..2027-02-01']);
  });

  it(
    'fills gaps back to the oldest partition, keeps existing bounds, and plans periods of stranded DEFAULT ' + 'rows',
    () => {
      const info = parent([
        ['2026-08-01', '2026-09-01'],
        ['2026-10-01', '2026-10-20'], // other bounds: October is only partly covered
      ]);
      const { missing, skipped } = planMissing(info, policy({}), DateTime.fromISO('2026-11-26T10:00:00Z'), [
        DateTime.fromISO('2026-03-15T00:00:00Z'),
      ]);
      expect(missing.map(iso)).toEqual([
        '2026-03-01..2026-04-01',
        '2026-09-01..2026-10-01',
        '2026-11-01..2026-12-01',
        '2026-12-01..2027-01-01',
        '2027-01-01..2027-02-01',
      ]);
      expect(skipped).toEqual([
        { range: expect.stringMatching(/^\[2026-10-01/), reason: expect.stringMatching(/partly covered by sales\.p1/) },
      ]);
    },
  );

  it('finds a gap among hourly partitions reaching back further than the calendar extends in one step', () => {
    const hourly = policy({ interval: 'hour', premake: 3 });
    const now = DateTime.fromISO('2026-11-26T10:30:00Z');
    // 15,000 hours of partitions, one missing 12,000 hours back; the calendar extends 10,000 at a time.
    const start = now.startOf('hour').minus({ hours: 15_000 });
    const parts: [string, string][] = [];
    for (let h = 0; h < 15_000 + 4; h++) {
      if (h === 3_000) continue;
      parts.push([start.plus({ hours: h }).toISO()!, start.plus({ hours: h + 1 }).toISO()!]);
    }
    const { missing, skipped } = planMissing(parent(parts), hourly, now, [
      DateTime.fromISO('2021-01-01T05:20:00Z', { zone: 'UTC' }),
    ]);
    expect(skipped).toEqual([]);
    expect(missing.map((p) => [p.from.toMillis(), p.to.toMillis()])).toEqual([
      [Date.parse('2021-01-01T05:00:00Z'), Date.parse('2021-01-01T06:00:00Z')],
      [start.plus({ hours: 3_000 }).toMillis(), start.plus({ hours: 3_001 }).toMillis()],
    ]);
  });

  it('periods follow local calendar days across a DST change; hourly partitions are named in UTC', () => {
    const berlin = policy({ interval: 'day', timeZone: 'Europe/Berlin' });
    const { missing } = planMissing(parent([], 'Europe/Berlin'), berlin, DateTime.fromISO('2026-10-24T12:00:00Z'));
    const dstDay = missing.find((p) => p.from.toISODate() === '2026-10-25')!;
    expect(dstDay.to.diff(dstDay.from, 'hours').hours).toBe(25);
    expect(partitionName('sale_order', dstDay.from, 'day')).toBe('sale_order_p20261025');
    const hour = DateTime.fromISO('2026-10-25T02:00:00', { zone: 'Europe/Berlin' });
    expect(partitionName('reading', hour, 'hour')).toBe(`reading_p${hour.toUTC().toFormat("yyyyMMdd'_'HH")}z`);
    expect(nextPeriod(DateTime.fromISO('2026-12-28T00:00:00Z', { zone: 'UTC' }), 'week').toISODate()).toBe(
      '2027-01-04',
    );
    expect(partitionName('t', DateTime.fromISO('2026-10-01T00:00:00Z', { zone: 'UTC' }), 'quarter')).toBe('t_p2026q4');
  });
});

describe('chunked AES-256-GCM', () => {
  const k = { id: 'k1', key: randomBytes(32) };
  const roundTrip = async (
    data: Buffer,
    transform: (enc: Buffer) => Buffer = (b) => b,
    keys = (id: string) => (id === 'k1' ? k : undefined),
  ) => {
    const encParts: Buffer[] = [];
    for await (const c of Readable.from([data]).pipe(encryptStream(k))) encParts.push(c as Buffer);
    const enc = Buffer.concat(encParts);
    const out: Buffer[] = [];
    await pipeline(Readable.from([transform(enc)]), decryptStream(keys, 'obj'), async (src: AsyncIterable<Buffer>) => {
      for await (const c of src) out.push(c as Buffer);
    });
    return { enc, plain: Buffer.concat(out) };
  };

  it('round-trips several chunks and an empty input', async () => {
    const data = randomBytes(3.5 * 1024 * 1024);
    const { enc, plain } = await roundTrip(data);
    expect(plain.equals(data)).toBe(true);
    expect(enc.subarray(0, 8).toString()).toBe('PGMENC1\n');
    expect((await roundTrip(Buffer.alloc(0))).plain.length).toBe(0);
  });

  it('refuses a truncated, altered or extended object, and an unknown key, naming the object', async () => {
    const data = randomBytes(2.5 * 1024 * 1024);
    const chunkBytes = 12 + 4 + 1024 * 1024 + 16;
    const header = 8 + 1 + 2;
    await expect(roundTrip(data, (e) => e.subarray(0, header + 2 * chunkBytes))).rejects.toThrow(
      /obj: cannot decrypt: the object is truncated/,
    );
    await expect(
      roundTrip(data, (e) => {
        const c = Buffer.from(e);
        c[header + 100]! ^= 1;
        return c;
      }),
    ).rejects.toThrow(/chunk 0 fails authentication/);
    await expect(roundTrip(data, (e) => Buffer.concat([e, e.subarray(header, header + chunkBytes)]))).rejects.toThrow(
      /data follows the last chunk/,
    );
    await expect(
      roundTrip(
        data,
        (e) => e,
        () => undefined,
      ),
    ).rejects.toThrow(/encrypted with key "k1", which is not configured/);
  });
});

describe('CopyRowCounter', () => {
  // A pg_restore script's shape: comments, a COPY per TABLE DATA entry, its end marker.
  const script = [
    'SET statement_timeout = 0;',
    '-- Data for Name: t_a; Type: TABLE DATA; Schema: app; Owner: postgres',
    'COPY app.t_a (ts, note) FROM stdin;',
    '2026-01-01 00:00:00+00\tplain',
    '2026-01-01 00:00:04+00\t\\\\.', // a value "\\." escaped: not the end marker
    '2026-01-01 00:00:08+00\t\\.x',
    '\\.',
    '',
    '-- Data for Name: t_empty; Type: TABLE DATA; Schema: app; Owner: postgres',
    'COPY app.t_empty (ts, note) FROM stdin;',
    '\\.',
    '-- Data for Name: t_b; Type: TABLE DATA; Schema: app; Owner: postgres',
    'COPY app.t_b (ts, note) FROM stdin;',
    ...Array.from({ length: 40 }, (_, i) => `2026-01-02 00:00:${String(i).padStart(2, '0')}+00\tzaïre ${i}`),
    '\\.',
    '',
  ].join('\n');
  const bytes = Buffer.from(script);
  const expected = new Map([
    ['app.t_a', 3],
    ['app.t_empty', 0],
    ['app.t_b', 40],
  ]);

  it("counts each COPY's rows however the script is cut into chunks", () => {
    for (let cut = 0; cut <= bytes.length; cut++) {
      const counter = new CopyRowCounter();
      counter.push(bytes.subarray(0, cut));
      counter.push(bytes.subarray(cut));
      expect(counter.rows, `cut at ${cut}`).toEqual(expected);
    }
    const byByte = new CopyRowCounter();
    for (let i = 0; i < bytes.length; i++) byByte.push(bytes.subarray(i, i + 1));
    expect(byByte.rows).toEqual(expected);
  });

  it('does not count a COPY the script cuts off before its end marker', () => {
    const counter = new CopyRowCounter();
    counter.push(bytes.subarray(0, bytes.indexOf('zaïre 20')));
    expect(counter.rows.has('app.t_b')).toBe(false);
  });
});

describe('runPipeline', () => {
  it('streams a | b | c through OS pipes and hands the last stage its output', async () => {
    const chunks: Buffer[] = [];
    await runPipeline(
      [
        { cmd: 'seq', args: ['1', '50000'] },
        { cmd: 'zstd', args: ['-q', '-c'] },
        { cmd: 'zstd', args: ['-q', '-d', '-c'] },
      ],
      { onStdout: (c) => chunks.push(c) },
    );
    const lines = Buffer.concat(chunks).toString().trimEnd().split('\n');
    expect(lines).toHaveLength(50000);
    expect(lines.at(-1)).toBe('50000');
  });

  it('names the stage that failed, not the one that died of it', async () => {
    // The writer fails: its reader ends normally and must not hide it.
    await expect(
      runPipeline([
        { cmd: 'sh', args: ['-c', 'echo partial; echo "no space left" >&2; exit 3'] },
        { cmd: 'cat', args: [] },
      ]),
    ).rejects.toThrow(/^sh exited with 3: no space left$/);
    // The reader fails: the writer dies of the closed pipe, or is killed.
    await expect(
      runPipeline([
        { cmd: 'yes', args: [] },
        { cmd: 'sh', args: ['-c', 'head -c 10 >/dev/null; echo "bad archive" >&2; exit 4'] },
      ]),
    ).rejects.toThrow(/^sh exited with 4: bad archive$/);
  });

  it('kills every stage on abort', async () => {
    const ac = new AbortController();
    const started = Date.now();
    setTimeout(() => ac.abort(), 200);
    await expect(
      runPipeline(
        [
          { cmd: 'sleep', args: ['30'] },
          { cmd: 'sleep', args: ['30'] },
        ],
        { signal: ac.signal },
      ),
    ).rejects.toThrow(/abort/i);
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});

describe('DiskFlush', () => {
  it('flushes a tree while a process writes it, and each file again only once it has grown', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgmaint-flush-'));
    try {
      const flush = new DiskFlush();
      // Ten files, each written in two halves 150 ms apart, by another process.
      const writing = runProcess(
        'sh',
        [
          '-c',
          'mkdir sub; for i in 0 1 2 3 4 5 6 7 8 9; do head -c 65536 /dev/zero > sub/f$i; done; sleep 0.15; ' +
            'for i in 0 1 2 3 4 5 6 7 8 9; do head -c 65536 /dev/zero >> sub/f$i; done',
        ],
        { cwd: dir },
      );
      flush.start(dir, writing);
      await writing;
      await flush.finish(dir);
      // Everything was flushed as it last changed: a pass now has nothing left to do.
      expect(await flush.pass(dir)).toBe(0);
      fs.appendFileSync(path.join(dir, 'sub', 'f3'), 'more');
      expect(await flush.pass(dir)).toBe(1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('64-bit integers in JSON', () => {
  // `pgbackrest info --output=json` as pgBackRest 2.x prints it (one stanza, one full set).
  const info = `[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000005",
    "min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000003",
    "stop":"000000010000000000000003"},"error":false,"info":{"delta":23456789,"repository":{"delta":3012345,
    "size":3012345},"size":23456789},"label":"20260502-060000F","lsn":{"start":"0/3000028","stop":"0/3000100"},
    "prior":null,"timestamp":{"start":1777701600,"stop":1777701605},"type":"full"}],"cipher":"none",
    "db":[{"id":1,"repo-key":1,"system-id":7714964812791504461,"version":"15"}],"name":"main",
    "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]`;

  it("pgBackRest's system-id keeps every digit, as a string", () => {
    const parsed = parseInfo(info, 'main');
    expect(parsed.systemId).toBe('7714964812791504461');
    expect(parsed.sets[0]).toMatchObject({ label: '20260502-060000F', bytes: 23456789, repositoryBytes: 3012345 });
    // What JSON.parse alone makes of it: the number rounded to the nearest double.
    expect(String(JSON.parse(info)[0].db[0]['system-id'])).toBe('7714964812791505000');
  });

  it('quotes named keys and integers past 2^53 only; strings, small numbers and decimals stay as they are', () => {
    const text =
      '{"id": 12, "note": "system-id: 7714964812791504461, \\"q\\"", "ids": [9007199254740993, 3], ' +
      '"ratio": 1.5, "big": -12345678901234567890, "nested": {"id": 7}}';
    expect(parseJsonExact(text, ['id'])).toEqual({
      id: '12',
      note: 'system-id: 7714964812791504461, "q"',
      ids: ['9007199254740993', 3],
      ratio: 1.5,
      big: '-12345678901234567890',
      nested: { id: '7' },
    });
  });
});

describe('run history when PostgreSQL fails a flush', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await createHarness('units_history');
  });
  afterAll(() => h.close());

  it('keeps the rows buffered, merges a finish that came meanwhile, and writes them once it can', async () => {
    const errors: unknown[] = [];
    const history = new RunHistory(h.admin, { flushDelayMs: 60_000, onError: (e) => errors.push(e) });
    await history.migrate();
    const run: RunStart = {
      queue: 'noop',
      jobId: '1',
      job: 'noop',
      target: 'main',
      payload: {},
      trigger: 'ad-hoc',
      scheduledFor: new Date(),
      attempt: 1,
      worker: 'w',
      recovered: false,
    };
    const id = history.start(run);
    await h.admin.query('alter table pgmaint.run_history rename to run_history_away');
    await expect(history.flush()).rejects.toThrow(/run_history/);
    // The run finishes while its insert is still unwritten.
    void history.finish(id, 'succeeded', { result: { ok: true } }).catch(() => undefined);
    await h.admin.query('alter table pgmaint.run_history_away rename to run_history');
    await history.flush();
    const { rows } = await h.admin.query('select job_id, outcome, result from pgmaint.run_history');
    expect(rows).toEqual([{ job_id: '1', outcome: 'succeeded', result: { ok: true } }]);
    await history.close();
  });
});
