# pgmaint image for docker-compose.yml: Node 24 LTS plus PostgreSQL 15's tools that the
# jobs run as child processes (pg_dump, pg_restore, pg_basebackup, pg_verifybackup, and
# pg_repack's client for repack-table) and its server binaries (postgres, pg_ctl) for the
# PITR drill's scratch instance; pgBackRest for the pgbackrest engine (the off-site
# profile); lz4 and zstd unpack compressed base backups; zstd compresses partition
# archives; openssl makes the off-site profile's MinIO certificate. Debian bookworm's
# builds, the same as docker/postgres.Dockerfile installs. No cluster is created in the image.
# The postgres user has the database image's uid and gid (999): the off-site profile's
# workers read its data directory through pgBackRest, as that user.
FROM node:24-bookworm-slim
RUN groupadd -r -g 999 postgres \
 && useradd -r -u 999 -g postgres -d /var/lib/postgresql -s /bin/bash postgres \
 && mkdir -p /var/lib/postgresql && chown postgres:postgres /var/lib/postgresql \
 && mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgmaint.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-15-repack pgbackrest \
      lz4 zstd openssl ca-certificates \
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
