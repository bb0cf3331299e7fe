# The database image of docker-compose.yml: PostgreSQL 15 (the official image, on Debian
# bookworm like the pgmaint image) with
# - pg_repack, whose extension repack-table needs in the database (create extension pg_repack);
# - pgBackRest, for the off-site profile's archive_command (archive-push to the bucket).
# Both are Debian bookworm's builds, as in the pgmaint image, not the newer ones of the
# PostgreSQL apt repository this image also lists: pg_repack's client and extension
# must be the same version, and both images' pgBackRest write to one repository.
FROM postgres:15-bookworm
RUN printf 'Package: pgbackrest postgresql-15-repack\nPin: origin apt.postgresql.org\nPin-Priority: -1\n' \
      > /etc/apt/preferences.d/pgmaint-debian-builds \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15-repack pgbackrest ca-certificates \
 && rm -rf /var/lib/apt/lists/*
