// `pgmaint demo`: a local PostgreSQL (WAL archiving on) and Redis (AOF, noeviction,
// as in docker-compose.yml) under one directory, a small dairy database, tokens.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { newToken, writeEnvFile } from './cli.ts';
import { createDatabase, startPostgres, startRedis } from './devstack.ts';

export const DEMO_SCHEMA = `
create schema if not exists sales;
create schema if not exists farm;
create table if not exists farm.animal (
  id serial primary key, tag_number text not null unique, breed text not null,
  status text not null check (status in ('active','sold','deceased','dry','culled')));
create table if not exists sales.sale_order (
  id bigint generated always as identity, company_id int not null, partner_id int not null,
  state text not null check (state in ('draft','sent','sale','done','cancel')),
  date_order timestamptz not null, amount_total numeric(12,2) not null,
  primary key (id, date_order)) partition by range (date_order);
create table if not exists sales.sale_order_default partition of sales.sale_order default;
create schema if not exists iot;
create table if not exists iot.sensor_reading (
  sensor_id int not null, read_at timestamptz not null, value double precision not null,
  unit text not null, quality smallint not null default 100) partition by range (read_at);
create table if not exists iot.sensor_reading_default partition of iot.sensor_reading default;
`;

export async function seedDemo(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(DEMO_SCHEMA);
    const { rows } = await client.query(`select count(*)::int as n from farm.animal`);
    if (rows[0].n > 0) return;
    await client.query(`insert into farm.animal (tag_number, breed, status)
      select 'BD-' || lpad(g::text, 4, '0'), (array['Holstein Friesian','Sahiwal','Red Chittagong'])[1 + g % 3],
             (array['active','active','active','dry','sold'])[1 + g % 5] from generate_series(1, 255) g`);
    await client.query(`insert into sales.sale_order (company_id, partner_id, state, date_order, amount_total)
      select 1 + g % 2, 1 + g % 400, (array['draft','sale','sale','done','cancel'])[1 + g % 5],
             now() - make_interval(mins => g * 7), round((50 + random() * 5000)::numeric, 2)
        from generate_series(1, 20000) g`);
  } finally {
    await client.end();
  }
}

export async function startDemoStack(dir: string): Promise<{ env: Record<string, string>; stop(): Promise<void> }> {
  fs.mkdirSync(dir, { recursive: true });
  const tokensFile = path.join(dir, 'tokens.json');
  const tokens = fs.existsSync(tokensFile) ? JSON.parse(fs.readFileSync(tokensFile, 'utf8')) : { admin: newToken(), viewer: newToken() };
  fs.writeFileSync(tokensFile, JSON.stringify(tokens), { mode: 0o600 });

  const postgres = await startPostgres({ dir: path.join(dir, 'pg') });
  const redis = await startRedis({ dir: path.join(dir, 'redis'), appendonly: true });
  await createDatabase(postgres, 'dairy');
  await seedDemo(postgres.url('dairy'));
  const env: Record<string, string> = {
    DATABASE_URL: postgres.url('dairy'),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
    WAL_ARCHIVE_DIR: postgres.walArchiveDir,
    ADMIN_TOKEN: tokens.admin as string,
    VIEWER_TOKEN: tokens.viewer as string,
    PORT: process.env.PORT ?? '3000',
  };
  // Partition policies of the dairy ERP (DOMAIN.md): orders monthly, 3 months ahead,
  // kept 24 months; IoT readings daily, 7 days ahead, kept 90 days.
  const configFile = path.join(dir, 'pgmaint.json');
  fs.writeFileSync(
    configFile,
    JSON.stringify(
      {
        partitions: [
          { table: 'sales.sale_order', column: 'date_order', interval: 'month', premake: 3, retention: '24 months', timeZone: 'Asia/Dhaka' },
          { table: 'iot.sensor_reading', column: 'read_at', interval: 'day', premake: 7, retention: '90 days', timeZone: 'Asia/Dhaka' },
        ],
        // DOMAIN.md: dumps kept 30 days; the drill counts orders and the herd at T.
        backups: { dumps: { keepLast: 3, maxAgeDays: 30 }, base: { keepLast: 2, maxAgeDays: 7 }, drillTables: ['sales.sale_order', 'farm.animal'] },
      },
      null,
      2,
    ),
  );
  Object.assign(env, { PGMAINT_CONFIG: configFile });
  writeEnvFile(path.join(dir, 'env.sh'), env);
  return {
    env,
    stop: async () => {
      await redis.stop();
      await postgres.stop();
    },
  };
}
