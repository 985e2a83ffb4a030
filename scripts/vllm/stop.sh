#!/usr/bin/env bash
# Stop a server started by scripts/vllm/serve.sh:  bash scripts/vllm/stop.sh [PORT]
# SIGTERM to the server's process group (API server, engine core, worker: all exit within
# a few seconds), SIGKILL after VLLM_STOP_TIMEOUT (default 30) seconds.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PORT="${1:-8011}"
PIDFILE="${VLLM_RUN_DIR:-$ROOT/build/vllm}/vllm-$PORT.pid"
[[ -f "$PIDFILE" ]] || { echo "[stop] no pid file $PIDFILE"; exit 0; }
PID="$(cat "$PIDFILE")"
alive() { [[ -n "$(ps -o pid= -g "$PID" 2>/dev/null)" ]]; }
if alive; then
  kill -TERM -- "-$PID" 2>/dev/null || kill -TERM "$PID" 2>/dev/null
  for _ in $(seq 1 $(( ${VLLM_STOP_TIMEOUT:-30} * 2 ))); do alive || break; sleep 0.5; done
  if alive; then
    echo "[stop] still running after SIGTERM; SIGKILL"
    kill -KILL -- "-$PID" 2>/dev/null || true
  fi
fi
rm -f "$PIDFILE"
echo "[stop] stopped server on port $PORT (pid $PID)"
