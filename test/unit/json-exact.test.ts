import { parseInfo } from '../../src/backup/pgbackrest.ts';
import { describe, expect, it } from 'vitest';
import { parseJsonExact } from '../../src/core/json.ts';

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
