"""Caption stages against a misbehaving model server (issue 16): a real local HTTP server
that accepts and never answers, and the response cache's bounded loss on a crash."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from assets.captions import CacheWriter, descriptions
from pathgen_dagster.lib.schemas import LLM_RESPONSES
from pathgen_dagster.resources.llm import LLMServer
from tests.assets.test_captions import SLIDE, materialize_patches
from tests.lib.captions.test_hung_server import hung_url  # noqa: F401 (fixture)


def test_hung_server_fails_the_slide_with_the_reason_after_one_timeout(
    instance,
    resources,
    landing: Path,
    hung_url: str,  # noqa: F811
):
    resources = materialize_patches(instance, resources, landing, max_per_slide=4)
    resources["llm"] = LLMServer(
        backend="vllm", base_url=hung_url, model="hung", timeout_s=1.0, breaker_failures=4
    )
    started = time.monotonic()
    result = dg.materialize(
        [descriptions], partition_key=SLIDE, instance=instance, resources=resources, raise_on_error=False
    )
    seconds = time.monotonic() - started
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.user_failure_data.description)
    assert f"slide {SLIDE}, stage description: stopped asking the model server" in message
    assert "circuit open after 4 consecutive failed requests" in message and "ReadTimeout" in message
    # With the defaults' retries (4) and deadline (600 s) each patch would keep asking.
    assert seconds < 30, seconds


def test_cache_writer_commits_by_time_as_well_as_count(lakehouse):
    writer = CacheWriter(lakehouse, SLIDE, every=16, after_s=0.2)

    def entry(i: int) -> dict:
        return {
            "cache_key": f"k{i}",
            "agent": "description",
            "patch_id": f"p{i}",
            "model_id": "m",
            "template_hash": "h",
            "input_hash": "x",
            "text": "Glands.",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "latency_s": 0.1,
        }

    writer(entry(0))
    time.sleep(0.25)
    writer(entry(1))  # the oldest unsaved answer is older than after_s: both committed
    assert sorted(lakehouse.read(LLM_RESPONSES.name, slide_id=SLIDE)["cache_key"]) == ["k0", "k1"]
    writer(entry(2))  # young and few: still buffered (lost on SIGKILL: the documented bound)
    assert lakehouse.read(LLM_RESPONSES.name, slide_id=SLIDE).height == 2
    writer.flush()
    assert lakehouse.read(LLM_RESPONSES.name, slide_id=SLIDE).height == 3
