# pgmaint image for docker-compose.yml: Node 20 plus the PostgreSQL 15 client tools
# (pg_dump, pg_restore, psql, pg_basebackup) that the jobs run as child processes.
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 ca-certificates \
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
