// `pgmaint demo`: a local PostgreSQL (WAL archiving on) and Redis (AOF, noeviction,
// as in docker-compose.yml) under one directory, the dairy database (src/dairy.ts), tokens.
import fs from 'node:fs';
import path from 'node:path';
import { newToken, writeEnvFile } from './env-file.ts';
import { seedDairy, type Scale } from './dairy.ts';
import { createDatabase, startPostgres, startRedis } from './devstack.ts';
import { BUSINESS_TIME_ZONE } from '../core/constants.ts';

export async function startDemoStack(
  dir: string,
  scale: Scale = 'default',
): Promise<{ env: Record<string, string>; stop(): Promise<void> }> {
  fs.mkdirSync(dir, { recursive: true });
  const tokensFile = path.join(dir, 'tokens.json');
  const tokens = fs.existsSync(tokensFile)
    ? JSON.parse(fs.readFileSync(tokensFile, 'utf8'))
    : { admin: newToken(), viewer: newToken() };
  fs.writeFileSync(tokensFile, JSON.stringify(tokens), { mode: 0o600 });

  const postgres = await startPostgres({ dir: path.join(dir, 'pg') });
  const redis = await startRedis({ dir: path.join(dir, 'redis'), appendonly: true });
  await createDatabase(postgres, 'dairy');
  await seedDairy(postgres.url('dairy'), scale, { log: (m) => console.error(`seed ${m}`) });
  const env: Record<string, string> = {
    DATABASE_URL: postgres.url('dairy'),
    REDIS_URL: redis.url,
    BACKUP_DIR: path.join(dir, 'backups'),
    WAL_ARCHIVE_DIR: postgres.walArchiveDir,
    ADMIN_TOKEN: tokens.admin as string,
    VIEWER_TOKEN: tokens.viewer as string,
    PORT: process.env.PORT ?? '3000',
  };
  // Partition policies of the dairy ERP (docs/dairy-erp.md): orders monthly, 3 months ahead,
  // kept 24 months; IoT readings daily, 7 days ahead, kept 90 days.
  const configFile = path.join(dir, 'pgmaint.json');
  fs.writeFileSync(
    configFile,
    JSON.stringify(
      {
        partitions: [
          {
            table: 'sales.sale_order',
            column: 'date_order',
            interval: 'month',
            premake: 3,
            retention: '24 months',
            timeZone: BUSINESS_TIME_ZONE,
          },
          {
            table: 'sales.sale_order_line',
            column: 'date_order',
            interval: 'month',
            premake: 3,
            retention: '24 months',
            timeZone: BUSINESS_TIME_ZONE,
          },
          {
            table: 'iot.sensor_reading',
            column: 'read_at',
            interval: 'day',
            premake: 7,
            retention: '90 days',
            timeZone: BUSINESS_TIME_ZONE,
          },
        ],
        // docs/dairy-erp.md: dumps kept 30 days; the drill counts orders and the herd at T.
        // Dashboards (docs/dairy-erp.md): sales by day, top products, herd; TTLs from 2 minutes to an hour.
        cache: {
          keyPrefix: 'dash:',
          queries: [
            {
              key: 'sales:daily:30d',
              ttlSeconds: 3600,
              sql:
                `select date, channel, sum(revenue) as revenue, sum(order_count) as orders from ` +
                `analytics.daily_sales_agg where date > current_date - 30 group by 1, 2 order by 1, 2`,
            },
            {
              key: 'products:top:30d',
              ttlSeconds: 600,
              sql:
                `select a.product_tmpl_id, p.name, sum(a.qty_sold) as qty, sum(a.revenue) as revenue from ` +
                `analytics.daily_sales_agg a join catalog.product_template p on p.id = a.product_tmpl_id where ` +
                `a.date > current_date - 30 group by 1, 2 order by revenue desc limit 20`,
            },
            {
              key: 'herd:summary',
              ttlSeconds: 120,
              sql: `select status, count(*) as animals from farm.animal group by status order by status`,
            },
          ],
        },
        backups: {
          dumps: { keepLast: 3, maxAgeDays: 30 },
          base: { keepLast: 2, maxAgeDays: 7 },
          drillTables: ['sales.sale_order', 'farm.animal'],
        },
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
