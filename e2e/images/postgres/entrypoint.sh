#!/bin/bash
# PostgreSQL in a container, as the image's non-root user. On the first start
# (no PG_VERSION in $PGDATA) it runs initdb with POSTGRES_PASSWORD for the
# superuser `postgres`, allows password logins from the network, and runs
# every /initdb.d/*.sql before the server listens on TCP, so clients never see
# a half-made database.
set -euo pipefail
bin="$(echo /usr/lib/postgresql/*/bin)"
export PATH="$bin:$PATH"
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
export PGDATA
socket=/tmp

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set for the first start}"
  pwfile="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$socket" start
  for f in /initdb.d/*.sql; do
    [[ -e "$f" ]] || continue
    echo "entrypoint: running $f"
    psql -v ON_ERROR_STOP=1 -h "$socket" -U postgres -d postgres -f "$f"
  done
  pg_ctl -D "$PGDATA" -w -m fast stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories="$socket" -c jit=off "$@"
