"""The three caption agents through a real vLLM server (CPU build, Gemma 3 270M).

Run by ``make test-vllm`` (and ``.ci/run``), which builds the vLLM environment and the
model folder and sets ``PATHGEN_VLLM_PYTHON`` and ``PATHGEN_VLLM_MODEL``. The server is
started with the same ``managed_server`` code the ``LLMServer`` resource uses for a
``launch_command``, once for the module, and the agents reach it through ``base_url``.
Gemma 270M is a small base model: it is not faithful, so most answers are expected to be
rejected by verification and replaced by grounded text; the test checks that the machinery
(requests, cache, verification, provenance) works, not the model's pathology.
"""

import os
import socket
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from assets.captions import AgentsConfig, captions, descriptions, revised_descriptions
from assets.patches import patch_embeddings, patches
from assets.slides import slides
from assets.tiles import tiles
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.llm import LLMServer, managed_server
from pathgen_dagster.resources.slide_store import SlideStore
from pathgen_dagster.sensors import register_landing

pytestmark = pytest.mark.vllm
VLLM_PYTHON = os.environ.get("PATHGEN_VLLM_PYTHON")
VLLM_MODEL = os.environ.get("PATHGEN_VLLM_MODEL")
SLIDE = "CMU-1-Small-Region"


@pytest.fixture(scope="module")
def vllm_url():
    if not (VLLM_PYTHON and VLLM_MODEL):
        pytest.skip("PATHGEN_VLLM_PYTHON / PATHGEN_VLLM_MODEL not set: run `make test-vllm`")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = (
        f"{VLLM_PYTHON} -m vllm.entrypoints.launchers.api_server.entry --model {VLLM_MODEL} "
        f"--served-model-name gemma-3-270m --host 127.0.0.1 --port {port} --dtype bfloat16 "
        "--max-model-len 2048 --enforce-eager"
    )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with managed_server(command, startup_timeout_s=600) as url:
        # The first completion pays the CPU kernels' warm-up; time it so a slow CI machine
        # shows up as a number in the log, not as the agents' timeouts.
        started = time.perf_counter()
        answer = httpx.post(
            f"{url}/v1/completions",
            json={"model": "gemma-3-270m", "prompt": "Tissue:", "max_tokens": 16},
            timeout=600,
        )
        answer.raise_for_status()
        print(f"\nvLLM CPU: first 16-token completion in {time.perf_counter() - started:.1f}s")
        yield url


def test_three_agents_through_vllm(vllm_url, sample_landing: Path, tmp_path: Path, instance):
    from pathgen_dagster.resources.lakehouse import Lakehouse

    lakehouse = Lakehouse(root=str(tmp_path / "lakehouse"))
    llm = LLMServer(
        backend="vllm",
        base_url=vllm_url,
        model="gemma-3-270m",
        stop=["\nUser:"],
        max_concurrency=8,
        # One core serves every request in flight: on the CI machine a batch of four
        # 256-token descriptions took longer than the production 120 s per attempt.
        timeout_s=900,
    )
    resources = {
        "lakehouse": lakehouse,
        "slide_store": SlideStore(landing=str(sample_landing)),
        "encoders": Encoders(),
        "llm": llm,
    }
    register_landing(instance, lakehouse, sample_landing)
    assert dg.materialize(
        [slides, tiles, patch_embeddings, patches],
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
    ).success
    # A 270M base model is rarely faithful: allow every row to fall back, record why.
    agents_config = {"config": AgentsConfig(max_failure_rate=1.0, max_attempts=2).model_dump()}
    run_config = {
        "ops": {
            name: agents_config for name in ("descriptions", "revised_descriptions", "captions")
        }
    }
    started = time.perf_counter()
    result = dg.materialize(
        [descriptions, revised_descriptions, captions],
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    first_seconds = time.perf_counter() - started
    assert result.success
    n_patches = len(lakehouse.read("patches", slide_id=SLIDE))
    for table in ("descriptions", "revised_descriptions", "captions"):
        rows = lakehouse.read(table, slide_id=SLIDE)
        assert len(rows) == n_patches
        assert set(rows["backend"]) == {"vllm"}
        assert rows["attempts"].sum() > 0, f"{table}: no request reached vLLM"
        assert rows["status"].is_in(["ok", "fallback"]).all()
        assert rows.filter(rows["status"] == "fallback")["failure_reason"].is_not_null().all()
    cache = lakehouse.read("llm_responses", slide_id=SLIDE)
    assert set(cache["model_id"]) == {"gemma-3-270m"} and len(cache) > 0
    captions_rows = lakehouse.read("captions", slide_id=SLIDE)
    assert captions_rows["caption"].is_not_null().all()
    # A re-run asks the model nothing: every answer comes from the response cache.
    rerun = dg.materialize(
        [descriptions, revised_descriptions, captions],
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    assert rerun.success
    for event in rerun.get_asset_materialization_events():
        assert event.step_materialization_data.materialization.metadata["requests_sent"].value == 0
    print(
        f"\nvLLM CPU: three agents for {n_patches} patches in {first_seconds:.1f}s; "
        f"{len(cache)} answers cached; re-run sent 0 requests"
    )
