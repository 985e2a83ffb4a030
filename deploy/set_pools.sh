#!/usr/bin/env bash
# Per-pool step limits of the PathGen instance in $DAGSTER_HOME (stored in the instance's
# database, so run it once per instance; re-running is harmless). dagster.yaml's
# `concurrency: pools: default_limit: 1` covers any pool not named here. The limits come
# from the machine's profile (`pathgen profile`, pathgen_dagster/profiles.py):
#   tile_readers  tiles: OpenSlide reads + tissue masks, ~1 core and a few hundred MB each
#   cpu | gpu     patch_embeddings: one step per slide at once on the CPU, one per GPU
#   llm           descriptions / revised_descriptions / captions: one model server
# Override a limit with e.g. PATHGEN_POOL_TILE_READERS=4 deploy/set_pools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DAGSTER:-}" ]; then
  if [ -x .venv/bin/dagster ]; then DAGSTER="$(pwd)/.venv/bin/dagster"; else DAGSTER=dagster; fi
fi
PATHGEN="$(dirname "$DAGSTER")/pathgen"
[ -x "$PATHGEN" ] || PATHGEN=pathgen
: "${DAGSTER_HOME:?set DAGSTER_HOME to the instance folder (it holds dagster.yaml)}"
"$PATHGEN" profile >&2
"$PATHGEN" profile --pools | while read -r pool limit; do
  "$DAGSTER" instance concurrency set "$pool" "$limit"
done
