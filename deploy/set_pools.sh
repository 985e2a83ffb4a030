#!/usr/bin/env bash
# Per-pool step limits of the PathGen instance in $DAGSTER_HOME (stored in the instance's
# database, so run it once per instance; re-running is harmless). dagster.yaml's
# `concurrency: pools: default_limit: 1` covers any pool not named here.
#   tile_readers  tiles: OpenSlide reads + tissue masks, ~1 core and a few hundred MB each
#   gpu           patch_embeddings: one encoder on the one accelerator (or the CPU)
#   llm           descriptions / revised_descriptions / captions: one model server
# Override a limit with e.g. PATHGEN_POOL_TILE_READERS=4 deploy/set_pools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DAGSTER:-}" ]; then
  if [ -x .venv/bin/dagster ]; then DAGSTER="$(pwd)/.venv/bin/dagster"; else DAGSTER=dagster; fi
fi
: "${DAGSTER_HOME:?set DAGSTER_HOME to the instance folder (it holds dagster.yaml)}"
"$DAGSTER" instance concurrency set tile_readers "${PATHGEN_POOL_TILE_READERS:-2}"
"$DAGSTER" instance concurrency set gpu "${PATHGEN_POOL_GPU:-1}"
"$DAGSTER" instance concurrency set llm "${PATHGEN_POOL_LLM:-1}"
