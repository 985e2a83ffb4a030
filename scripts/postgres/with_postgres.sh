#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL: start it, export PATHGEN_PG_* and
# PATHGEN_PG_URL, run the command, stop and delete the server whatever the command did.
#
#   scripts/postgres/with_postgres.sh .venv/bin/pytest -q tests/instance
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_lines="$("$here/start.sh")"
eval "$env_lines"
trap '"$here/stop.sh" "$PATHGEN_PG_DIR"' EXIT
status=0
"$@" || status=$?
exit $status
