#!/usr/bin/env bash
# The whole CPU vLLM path, unattended, with timings (for .ci/run or by hand):
#   setup venv -> build model folder -> start server -> smoke + throughput -> stop.
#
#   bash scripts/vllm/ci.sh            # measured on 2 shared cores: 3.5-8.5 min from a fresh
#                                      # clone, ~2 min when venv and model folder exist
# Env: VLLM_VENV, VLLM_MODEL_DIR (default <repo>/models/gemma-3-270m), VLLM_PORT (default:
# a free port), VLLM_EAGER (default 1: --enforce-eager, ~75 s faster start on 2 cores,
# ~20 % fewer tokens/s; 0 = torch.compile as vLLM does by default).
# Writes build/vllm/smoke.json and build/vllm/ci-timings.txt. Exit 0 only when all passed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export VLLM_VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
MODEL_DIR="${VLLM_MODEL_DIR:-$ROOT/models/gemma-3-270m}"
RUN_DIR="${VLLM_RUN_DIR:-$ROOT/build/vllm}"
mkdir -p "$RUN_DIR"
TIMINGS="$RUN_DIR/ci-timings.txt"
: >"$TIMINGS"

step() {  # step NAME CMD...: run, time, record
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== [vllm-ci] $name"
  "$@"
  echo "$name: $((SECONDS - t0)) s" | tee -a "$TIMINGS"
}

step setup bash "$HERE/setup.sh" "$VLLM_VENV"
step prepare_model "$VLLM_VENV/bin/python" "$HERE/prepare_model.py" "$MODEL_DIR"

PORT="${VLLM_PORT:-$("$VLLM_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
EXTRA=()
[[ "${VLLM_EAGER:-1}" == "1" ]] && EXTRA=(--enforce-eager)
trap 'bash "$HERE/stop.sh" "$PORT" >/dev/null 2>&1 || true' EXIT
step serve bash "$HERE/serve.sh" "$MODEL_DIR" "$PORT" -- "${EXTRA[@]}"
step smoke "$VLLM_VENV/bin/python" "$HERE/smoke.py" "http://127.0.0.1:$PORT" --json "$RUN_DIR/smoke.json"
step stop bash "$HERE/stop.sh" "$PORT"
trap - EXIT
echo "=== [vllm-ci] timings"; cat "$TIMINGS"
echo "=== [vllm-ci] OK"
