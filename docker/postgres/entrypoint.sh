#!/bin/sh
# Starts PostgreSQL as the postgres user, creating the cluster on first start:
#   POSTGRES_USER (default suite) owns POSTGRES_DB (default suite) and logs in with
#   POSTGRES_PASSWORD, or the password in POSTGRES_PASSWORD_FILE (a Docker secret). Required:
#   the server listens on every interface of the container (the stack's overlay network), so
#   every TCP login needs that password (scram-sha-256); only the container's own
#   socket is trusted, for pg_isready and this script.
# `exec` leaves the server as PID 1, so SIGTERM from docker is its smart shutdown.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-suite}
database=${POSTGRES_DB:-suite}
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  password=$(cat "$POSTGRES_PASSWORD_FILE")
else
  password=${POSTGRES_PASSWORD:-}
fi
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$password" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE for the first start" >&2
    exit 1
  fi
  echo "postgres-entrypoint: creating the cluster in $PGDATA (user $user, database $database)"
  pwfile=$(mktemp)
  printf '%s\n' "$password" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
    echo "max_connections = 200"
    echo "password_encryption = 'scram-sha-256'"
  } >>"$PGDATA/postgresql.conf"
  # Any address may try, with the password; nothing is trusted over TCP.
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_postgres pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
  as_postgres psql --quiet --username="$user" --dbname=postgres \
    --command="CREATE DATABASE \"$database\" OWNER \"$user\"" 2>/dev/null \
    || true # already there when POSTGRES_DB is postgres
  as_postgres pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$PGDATA" "$@"
