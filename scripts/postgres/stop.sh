#!/usr/bin/env bash
# Stop the throwaway PostgreSQL that scripts/postgres/start.sh started, and delete its folder.
#
#   scripts/postgres/stop.sh [PATHGEN_PG_DIR]     # default: $PATHGEN_PG_DIR
#   PATHGEN_PG_KEEP=1 scripts/postgres/stop.sh   # stop, but keep the data folder
set -euo pipefail

PG_DIR="${1:-${PATHGEN_PG_DIR:-}}"
if [ -z "$PG_DIR" ]; then
  echo "postgres/stop.sh: pass the folder start.sh printed (PATHGEN_PG_DIR)" >&2
  exit 2
fi
if [ ! -e "$PG_DIR/data/PG_VERSION" ]; then
  echo "postgres/stop.sh: no cluster in $PG_DIR/data (already stopped and removed?)" >&2
  exit 0
fi
case "$PG_DIR" in
  /tmp/*|/var/tmp/*|"${TMPDIR:-/nonexistent}"/*) ;;
  *) echo "postgres/stop.sh: refusing to manage $PG_DIR (not a temporary folder)" >&2; exit 2 ;;
esac

PG_VERSION="$(cat "$PG_DIR/data/PG_VERSION")"
PG_CTL="/usr/lib/postgresql/$PG_VERSION/bin/pg_ctl"
[ -x "$PG_CTL" ] || PG_CTL="$(command -v pg_ctl)"

if [ "$(id -u)" -eq 0 ]; then
  runuser -u postgres -- "$PG_CTL" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
else
  "$PG_CTL" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
fi
if [ "${PATHGEN_PG_KEEP:-0}" = 1 ]; then
  echo "postgres/stop.sh: stopped; data kept in $PG_DIR" >&2
else
  rm -rf "$PG_DIR"
  echo "postgres/stop.sh: stopped and removed $PG_DIR" >&2
fi
