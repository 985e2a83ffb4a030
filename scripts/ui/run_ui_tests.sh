#!/usr/bin/env bash
# The browser stage: Debian's Chromium driven by Playwright's Python package against a real
# `dagster dev`, over a fresh lakehouse built from the sample slides (tests/ui/).
#
#   scripts/ui/run_ui_tests.sh [pytest args...]
#
# Installs Debian's `chromium` when it is missing and we are root (no browser downloads:
# Playwright drives /usr/bin/chromium through executable_path; `playwright install` is never
# run). Screenshots and measured times land in artifacts/ui/ (figures.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
CHROMIUM="${PATHGEN_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "run_ui_tests.sh: installing Debian's chromium (apt-get install -y chromium)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y chromium >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
  else
    echo "run_ui_tests.sh: $CHROMIUM missing; as root: apt-get install -y chromium" >&2
    exit 1
  fi
fi
"$CHROMIUM" --version

mkdir -p artifacts/ui
started=$(date +%s)
status=0
PATHGEN_UI_REQUIRED=1 PATHGEN_CHROMIUM="$CHROMIUM" \
  "$VENV/bin/pytest" -q -m ui tests/ui -p no:cacheprovider "$@" || status=$?
echo "browser stage: $(( $(date +%s) - started ))s, exit $status; artefacts in artifacts/ui/"
[ -f artifacts/ui/figures.json ] && cat artifacts/ui/figures.json
exit $status
