# pgmaint image for docker-compose.yml: Node 24 LTS plus PostgreSQL 15's tools that the
# jobs run as child processes (pg_dump, pg_restore, pg_basebackup, pg_verifybackup)
# and its server binaries (postgres, pg_ctl) for the PITR drill's scratch instance;
# lz4 and zstd unpack compressed base backups; zstd compresses partition archives. No cluster is created in the image.
FROM node:24-bookworm-slim
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgmaint.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 lz4 zstd ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY jobs ./jobs
COPY workers ./workers
COPY schedules ./schedules
COPY tsconfig.json ./
ENV PG_BINDIR=/usr/lib/postgresql/15/bin NODE_ENV=production
USER node
ENTRYPOINT ["node", "bin/pgmaint.js"]
CMD ["server"]
