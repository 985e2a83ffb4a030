"""The caption agents end to end: grounded chain, embedded model chain, cache, resume."""

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.captions import captions, descriptions, revised_descriptions
from assets.patches import patch_embeddings, patches
from assets.slides import slides
from assets.tiles import tiles
from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.agents import AGENTS, AgentConfig, PatchInput, ResponseCache, run_agent
from pathgen_dagster.lib.captions.embedded_server import EmbeddedServer
from pathgen_dagster.lib.captions.llm import ChatClient
from pathgen_dagster.lib.captions.tokenizer import get_tokenizer
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.llm import LLMServer, Session
from pathgen_dagster.sensors import register_landing

SLIDE = "CMU-1-Small-Region"
AGENT_ASSETS = [descriptions, revised_descriptions, captions]


def materialize_patches(instance, resources, landing: Path, max_per_slide: int | None = None) -> dict:
    """The CMU slide materialized through `patches`; returns the resources."""
    resources = {**resources, "encoders": Encoders(), "llm": LLMServer()}
    register_landing(instance, resources["lakehouse"], landing)
    run_config = {"ops": {"patches": {"config": {"max_per_slide": max_per_slide}}}} if max_per_slide else None
    result = dg.materialize(
        [slides, tiles, patch_embeddings, patches],
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    assert result.success
    return resources


@pytest.fixture
def patched(instance, resources, landing: Path):
    return materialize_patches(instance, resources, landing)


def run_agents(instance, resources, **config):
    run_config = {"ops": {a.key.path[-1]: {"config": config} for a in AGENT_ASSETS}} if config else None
    return dg.materialize(
        AGENT_ASSETS,
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )


def metadata(result, asset: str, key: str):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return event.step_materialization_data.materialization.metadata[key].value


def test_grounded_chain_is_faithful_and_fits_clip(instance, patched):
    assert run_agents(instance, patched).success
    lakehouse = patched["lakehouse"]
    patch_rows = lakehouse.read("patches", slide_id=SLIDE)
    caption_rows = lakehouse.read("captions", slide_id=SLIDE)
    assert len(caption_rows) == len(patch_rows) > 0
    assert caption_rows["fits_clip"].all() and (caption_rows["clip_tokens"] <= 77).all()
    assert set(caption_rows["backend"]) == {"grounded"} and set(caption_rows["status"]) == {"ok"}
    described = lakehouse.read("descriptions", slide_id=SLIDE).join(patch_rows, on="patch_id")
    for row in described.iter_rows(named=True):
        facts = MorphologyFacts.from_dict(json.loads(row["facts_json"]))
        assert verbalize.contradictions(row["description"], facts) == []
    for row in caption_rows.iter_rows(named=True):
        assert get_tokenizer().count(row["caption"]) == row["clip_tokens"]
        assert row["template_hash"] and row["sampling_json"] and row["upstream_version"] is not None


@pytest.mark.slow
def test_embedded_model_chain_records_provenance_and_rerun_hits_cache(instance, resources, landing):
    # Two patches keep the CPU model's share of the suite to a few minutes.
    patched = materialize_patches(instance, resources, landing, max_per_slide=2)
    resources = {**patched, "llm": LLMServer(backend="embedded", embedded_parallel=2)}
    first = run_agents(instance, resources, max_attempts=1, max_failure_rate=1.0)
    assert first.success
    lakehouse = patched["lakehouse"]
    for table in ("descriptions", "revised_descriptions", "captions"):
        rows = lakehouse.read(table, slide_id=SLIDE)
        assert set(rows["backend"]) == {"embedded"}
        assert (rows["attempts"] >= 1).all()
        # Every row has text: accepted model output, or grounded text with the reason.
        text_column = {"descriptions": "description", "revised_descriptions": "revised"}.get(table, "caption")
        assert rows[text_column].is_not_null().all()
        fallbacks = rows.filter(rows["status"] == "fallback")
        assert fallbacks["failure_reason"].is_not_null().all()
    assert metadata(first, "descriptions", "requests_sent") > 0
    second = run_agents(instance, resources, max_attempts=1, max_failure_rate=1.0)
    assert second.success
    for asset in ("descriptions", "revised_descriptions", "captions"):
        assert metadata(second, asset, "requests_sent") == 0
        assert metadata(second, asset, "cache_hits") > 0


def test_too_many_rejections_fail_the_slide_but_keep_the_rows(instance, patched):
    # A closed port: every request fails, every row falls back, the slide fails loudly.
    resources = {
        **patched,
        "llm": LLMServer(backend="vllm", base_url="http://127.0.0.1:9", model="m"),
    }
    result = dg.materialize(
        [descriptions],
        partition_key=SLIDE,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "does not answer" in str(failure.step_failure_data.error)


@pytest.mark.slow
def test_resume_after_the_server_stops_mid_slide():
    facts = MorphologyFacts.from_dict(json.loads(Path(__file__).with_name("facts_example.json").read_text()))
    items = [PatchInput(patch_id=f"p{i}", facts=facts) for i in range(4)]
    # One attempt per patch, so both runs ask exactly the same requests.
    config = AgentConfig(max_tokens={"description": 48, "revision": 48, "summary": 48}, max_attempts=1)
    stored: dict[str, dict] = {}
    with EmbeddedServer(n_parallel=1) as server:
        port = server.port
        with ChatClient(
            server.base_url, max_concurrency=1, max_retries=1, backoff_s=0.1, deadline_s=180
        ) as client:
            session = Session("embedded", server.model_id, False, client)

            def stop_after_two(entry: dict) -> None:
                stored[entry["cache_key"]] = entry
                if len(stored) == 2:
                    server.stop()  # the server dies mid-slide

            first = run_agent(
                AGENTS["description"],
                items,
                session=session,
                cache=ResponseCache({}, sink=stop_after_two),
                config=config,
            )
    assert len(stored) == 2
    assert sum("request failed" in (o.failure_reason or "") for o in first) >= 1
    with (
        EmbeddedServer(n_parallel=1, port=port) as server,
        ChatClient(server.base_url, max_concurrency=1) as client,
    ):
        session = Session("embedded", server.model_id, False, client)
        cache = ResponseCache(dict(stored))
        run_agent(AGENTS["description"], items, session=session, cache=cache, config=config)
    # Answers saved before the crash are not asked again.
    assert cache.hits == 2
    assert client.requests_sent == len(items) - 2
