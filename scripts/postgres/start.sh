#!/usr/bin/env bash
# A throwaway PostgreSQL for the team instance (deploy/dagster-team.yaml) and its test.
#
# Installs Debian's `postgresql` if no server binaries are found, creates a fresh cluster in
# a temporary folder owned by a non-root user (PostgreSQL refuses to run as root; as root
# this script uses the `postgres` system user), starts it on 127.0.0.1 on a free port with
# password authentication, creates a role and a database, and prints the connection
# variables. They are also written to "$PATHGEN_PG_DIR/env" for `source`.
#
#   eval "$(scripts/postgres/start.sh)"     # exports PATHGEN_PG_* and PATHGEN_PG_URL
#   ...                                      # use deploy/dagster-team.yaml, run tests
#   scripts/postgres/stop.sh                 # stops it and deletes the folder
#
# Optional: PATHGEN_PG_DIR (folder to use; default a new mktemp folder), PATHGEN_PG_PORT.
set -euo pipefail

log() { echo "postgres/start.sh: $*" >&2; }

find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

if ! BINDIR="$(find_bindir)"; then
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL server binaries not found and not root: run 'apt-get install -y postgresql' as root"
    exit 1
  fi
  log "installing Debian's postgresql (apt-get install -y postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y postgresql >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y postgresql >/dev/null; }
  BINDIR="$(find_bindir)"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PG_DIR="${PATHGEN_PG_DIR:-$(mktemp -d /tmp/pathgen-postgres.XXXXXX)}"
PG_PORT="${PATHGEN_PG_PORT:-$(free_port)}"
PG_USER=pathgen
PG_DB=pathgen
PG_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
mkdir -p "$PG_DIR"

# Run cluster commands as a non-root user: ourselves, or `postgres` when we are root.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  chown postgres "$PG_DIR"
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

if [ -e "$PG_DIR/data/PG_VERSION" ]; then
  log "reusing the cluster in $PG_DIR/data"
  PG_PASSWORD="$(cat "$PG_DIR/password")"
else
  umask 077
  printf '%s\n' "$PG_PASSWORD" > "$PG_DIR/password"
  [ "$(id -u)" -eq 0 ] && chown postgres "$PG_DIR/password"
  # Local socket: trust for the owner (this script); TCP: password (scram) for everyone.
  as_owner "$BINDIR/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 || {
      cat "$PG_DIR/initdb.log" >&2; exit 1; }
fi

as_owner "$BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=200" start >/dev/null || {
    cat "$PG_DIR/server.log" >&2; exit 1; }

psql_owner() { as_owner "$BINDIR/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ "$(psql_owner -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
  # CREATEDB: tests make a fresh database per run inside this server and drop it after.
  psql_owner -d postgres -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
  psql_owner -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
fi

URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
cat > "$PG_DIR/env" <<EOF
export PATHGEN_PG_DIR=$PG_DIR
export PATHGEN_PG_HOST=127.0.0.1
export PATHGEN_PG_PORT=$PG_PORT
export PATHGEN_PG_USER=$PG_USER
export PATHGEN_PG_PASSWORD=$PG_PASSWORD
export PATHGEN_PG_DB=$PG_DB
export PATHGEN_PG_URL=$URL
EOF
[ "$(id -u)" -eq 0 ] && chmod 644 "$PG_DIR/env"
log "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, data in $PG_DIR/data"
cat "$PG_DIR/env"
