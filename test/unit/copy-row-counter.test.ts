import { CopyRowCounter } from '../../src/backup/partition-archive.ts';
import { describe, expect, it } from 'vitest';

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
