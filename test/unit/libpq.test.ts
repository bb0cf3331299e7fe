import { describe, expect, it } from 'vitest';
import { libpqSettings } from '../../src/core/libpq.ts';

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
