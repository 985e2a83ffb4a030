"""``instructions`` through Dagster on the real chain: the sample slides go through every
caption stage (grounded agents) to ``training_pairs``; then the instruction asset, its
checks, the LLaVA export, lineage, re-materialization and the embedded model server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from assets.caption_quality import caption_quality
from assets.captions import captions, descriptions, revised_descriptions
from assets.dataset_duplicates import dataset_duplicates
from assets.exports import llava_instruct_export
from assets.instructions import instructions, pair_inputs
from assets.patches import patch_embeddings, patches
from assets.slides import slides
from assets.sql_models import sql_model_assets
from assets.tiles import tiles
from pathgen_dagster.lib.captions.agents import Rejected, ResponseCache
from pathgen_dagster.lib.dataset.exports import LLAVA_JSON, read_manifest, verify
from pathgen_dagster.lib.instructions.agent import parse_answers
from pathgen_dagster.lib.instructions.conversation import plan
from pathgen_dagster.lib.instructions.generate import InstructionConfig, conversation_rows, judge_rows
from pathgen_dagster.lib.schemas import INSTRUCTIONS
from pathgen_dagster.lineage import format_instruction_lineage, trace_instruction
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer, Session
from pathgen_dagster.resources.slide_store import SlideStore
from pathgen_dagster.sensors import register_landing
from quality.instruction_checks import (
    InstructionChecksConfig,
    gate_result,
    instruction_expectations,
    instruction_letter_balance,
    instructions_gate,
)

SLIDE_A = "CMU-1-Small-Region"
SLIDE_B = "synthetic-aperio-20x"
TRAINING_PAIRS = next(a for a in sql_model_assets if a.key.to_user_string() == "training_pairs")
CHAIN = [slides, tiles, patch_embeddings, patches, descriptions, revised_descriptions, captions]
CHAIN += [caption_quality, TRAINING_PAIRS]
CHECKS = [instructions_gate, instruction_letter_balance, instruction_expectations]


def materialize(assets, instance, resources, partition_key=None, checks=()):
    result = dg.materialize(
        [*assets, *checks],
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        pytest.fail(str(failure.step_failure_data.error))
    return result


@pytest.fixture(scope="module")
def chain_template(sample_landing: Path, tmp_path_factory) -> Path:
    """A lakehouse with two real slides built through training_pairs (once per module)."""
    root = tmp_path_factory.mktemp("instructions") / "lakehouse"
    lakehouse = Lakehouse(root=str(root))
    resources = {
        "lakehouse": lakehouse,
        "slide_store": SlideStore(landing=str(sample_landing)),
        "encoders": Encoders(device="cpu"),
        "llm": LLMServer(),
    }
    with dg.instance_for_test() as instance:
        register_landing(instance, lakehouse, sample_landing)
        for slide_id in (SLIDE_A, SLIDE_B):
            materialize(CHAIN, instance, resources, slide_id)
    return root


@pytest.fixture
def built(chain_template: Path, tmp_path: Path, sample_landing: Path):
    """A private copy of the built lakehouse, an instance with both partitions, resources."""
    root = tmp_path / "lakehouse"
    shutil.copytree(chain_template, root)
    lakehouse = Lakehouse(root=str(root))
    resources = {
        "lakehouse": lakehouse,
        "slide_store": SlideStore(landing=str(sample_landing)),
        "llm": LLMServer(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SLIDES_PARTITION, [SLIDE_A, SLIDE_B])
        yield lakehouse, instance, resources


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_instructions_from_passed_pairs_with_checks_and_sql(built):
    lakehouse, instance, resources = built
    result = materialize([instructions], instance, resources, SLIDE_A, checks=CHECKS)
    rows = lakehouse.read(INSTRUCTIONS.name, slide_id=SLIDE_A)
    pairs = lakehouse.read("training_pairs", slide_id=SLIDE_A)
    assert pairs.height > 0
    # Only pairs that passed the caption gates, every one of them.
    assert set(rows["pair_id"]) == set(pairs["pair_id"])
    assert set(rows["kind"]) == {"conversation", "multiple_choice"}
    checks = check_results(result)
    assert checks["instructions_gate"].passed, checks["instructions_gate"].description
    assert checks["instruction_letter_balance"].passed
    assert checks["instruction_expectations"].passed, checks["instruction_expectations"].description
    metadata = result.asset_materializations_for_node("instructions")[0].metadata
    assert metadata["conversations"].value + metadata["multiple_choice"].value == (
        rows.filter(pl.col("status") == "ok").height
    )
    assert "examples" in metadata and "letter_distribution" in metadata
    counts = lakehouse.sql("SELECT kind, count(*) AS n FROM instructions GROUP BY 1 ORDER BY 1")
    assert counts["n"].sum() == rows.height
    mc = rows.filter(pl.col("kind") == "multiple_choice").row(0, named=True)
    assert len(mc["options"]) == 4 and mc["answer_letter"] in "ABCD"
    assert mc["answer_text"] not in mc["question"] and mc["grounding"][0].startswith(
        mc["grounding"][0].split(" = ")[0]
    )
    assert rows["training_pairs_version"].null_count() == 0


def test_llava_export_reads_back_and_blocked_slide_is_left_out(built):
    lakehouse, instance, resources = built
    for slide_id in (SLIDE_A, SLIDE_B):
        materialize([instructions], instance, resources, slide_id)
    # Slide B's rows mostly fail (as a bad backend would leave them): quarantined, blocked.
    b_rows = lakehouse.read(INSTRUCTIONS.name, slide_id=SLIDE_B)
    broken = b_rows.with_columns(
        status=pl.lit("quarantined"),
        failed_rules=pl.lit(["answers_grounded"], dtype=pl.List(pl.String)),
    )
    lakehouse.write_slide(INSTRUCTIONS.name, SLIDE_B, broken)
    gate = gate_result(lakehouse, SLIDE_B, InstructionChecksConfig())
    materialize([dataset_duplicates, llava_instruct_export], instance, resources)

    folder = Path(lakehouse.root).resolve() / "exports" / "llava_instruct"
    records = json.loads((folder / LLAVA_JSON).read_text())
    ok_a = lakehouse.read(INSTRUCTIONS.name, slide_id=SLIDE_A).filter(pl.col("status") == "ok")
    assert len(records) == ok_a.height > 0
    assert {r["id"] for r in records} == set(ok_a["instruction_id"])
    manifest = read_manifest(folder)
    assert manifest["pairs"] == len(records) and verify(folder) == []
    assert manifest["counts"]["conversation"] + manifest["counts"]["multiple_choice"] == len(records)
    assert set(manifest["source_versions"]) == {
        "instructions", "training_pairs", "dataset_duplicates", "patches"
    }
    for record in records:
        assert set(record) >= {"id", "image", "conversations"}
        turns = record["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        with Image.open(folder / record["image"]) as image:
            image.verify()
        if record["type"] == "CLOSE":
            assert turns[1]["value"] in "ABCD" and len(turns) == 2
    assert not any(r["id"].startswith(SLIDE_B) for r in records)
    # The stored rows changed under the gate: it names slide B and the rule.
    assert gate.passed is False and SLIDE_B in gate.description


def test_llava_export_before_instructions_exist_is_empty_and_says_why(built):
    lakehouse, instance, resources = built
    materialize([dataset_duplicates, llava_instruct_export], instance, resources)
    folder = Path(lakehouse.root).resolve() / "exports" / "llava_instruct"
    assert json.loads((folder / LLAVA_JSON).read_text()) == []
    manifest = read_manifest(folder)
    assert manifest["pairs"] == 0 and "instructions never materialized" in manifest["config"]["note"]
    assert "instructions" not in manifest["source_versions"]


def test_gate_rejudges_rows_stored_as_ok(built):
    """A row stored as ok whose answer letter points at a distractor fails the gate."""
    lakehouse, instance, resources = built
    materialize([instructions], instance, resources, SLIDE_A)
    rows = lakehouse.read(INSTRUCTIONS.name, slide_id=SLIDE_A)

    def wrong_letter(row: dict) -> dict:
        if row["kind"] != "multiple_choice":
            return row
        letter = "ABCD"[("ABCD".index(row["answer_letter"]) + 1) % 4]
        turns = json.loads(row["turns_json"])
        turns[1]["value"] = letter
        return {**row, "answer_letter": letter, "turns_json": json.dumps(turns)}

    tampered = pl.DataFrame([wrong_letter(r) for r in rows.iter_rows(named=True)], schema=rows.schema)
    lakehouse.write_slide(INSTRUCTIONS.name, SLIDE_A, tampered)
    gate = gate_result(lakehouse, SLIDE_A, InstructionChecksConfig())
    assert not gate.passed and "stored as ok fail a rule now" in gate.description


def test_rematerializing_one_slide_changes_only_its_rows(built):
    lakehouse, instance, resources = built
    materialize([instructions], instance, resources, SLIDE_A)
    materialize([instructions], instance, resources, SLIDE_B)
    before = lakehouse.read(INSTRUCTIONS.name).sort("instruction_id")
    materialize([instructions], instance, resources, SLIDE_A)
    after = lakehouse.read(INSTRUCTIONS.name).sort("instruction_id")
    a_before, a_after = (f.filter(pl.col("slide_id") == SLIDE_A) for f in (before, after))
    b_before, b_after = (f.filter(pl.col("slide_id") == SLIDE_B) for f in (before, after))
    assert b_after.equals(b_before)
    assert a_after.drop("run_id").equals(a_before.drop("run_id"))
    assert set(a_after["run_id"]) != set(a_before["run_id"])


def test_instruction_lineage_walks_back_to_the_slide_file(built):
    lakehouse, instance, resources = built
    materialize([instructions], instance, resources, SLIDE_A)
    first = lakehouse.sql("SELECT min(instruction_id) AS i FROM instructions WHERE kind = 'multiple_choice'")
    lineage = trace_instruction(lakehouse, first["i"][0])
    assert lineage.row["kind"] == "multiple_choice"
    assert lineage.pair.pair_id == lineage.row["pair_id"]
    slide_step = lineage.pair.steps[0]
    assert slide_step.table == "slides" and slide_step.row["uri"].endswith(".svs")
    text = format_instruction_lineage(lineage)
    assert first["i"][0] in text and "slide file" in text


@pytest.mark.slow
def test_embedded_server_answers_are_parsed_strictly_retried_and_recorded(built):
    """SmolLM2 on the real llama.cpp server, held only to "some JSON object" (not the
    answers' schema): its answers are parsed strictly and checked; each rejection is
    retried with a new seed and recorded, the row falls back to the grounded answers, and a
    re-run is answered from the response cache."""
    from pathgen_dagster.lib.captions.embedded_server import EmbeddedServer
    from pathgen_dagster.lib.captions.llm import ChatClient
    from pathgen_dagster.lib.captions.screening import RULE_NAMES as SCREENS
    from pathgen_dagster.lib.instructions.rules import RULE_NAMES

    lakehouse, _, _ = built
    pairs = pair_inputs(lakehouse, SLIDE_A)[:2]
    config = InstructionConfig(max_attempts=2, max_tokens=200)
    loose = {"type": "json_object"}
    entries: list[dict] = []
    with (
        EmbeddedServer(n_parallel=2, n_threads=1, ctx_per_slot=1536) as server,
        ChatClient(server.base_url, max_concurrency=2) as client,
    ):
        session = Session("embedded", server.model_id, False, client)
        cache = ResponseCache({}, sink=entries.append)
        rows = judge_rows(
            conversation_rows(pairs, session=session, cache=cache, config=config, response_format=loose),
            pairs,
        )
        again = conversation_rows(
            pairs,
            session=session,
            cache=ResponseCache({e["cache_key"]: e for e in entries}),
            config=config,
            response_format=loose,
        )
    assert len(rows) == len(pairs) and {r.backend for r in rows} == {"embedded"}
    assert len(entries) == sum(r.attempts for r in rows)  # every answer cached as it arrived
    known = ("malformed JSON", "request failed", *SCREENS, *RULE_NAMES)
    rejected = [r for r in rows if r.generation_status == "fallback"]
    for row in rows:
        if row.generation_status == "fallback":
            assert row.attempts == config.max_attempts and row.generation_failure
            reasons = row.generation_failure.split(" | ")
            assert len(reasons) == config.max_attempts
            assert all(reason.startswith(known) for reason in reasons), reasons
        assert row.failed_rules == []  # accepted answers and grounded fallbacks pass every rule
    print("embedded instruction answers:", [(r.generation_status, r.generation_failure) for r in rows])
    # What the server really sent back: a cut-off answer is malformed JSON to the parser too.
    questions = {p.patch_id: len(plan(p).questions) for p in pairs}
    for entry in entries:
        if entry["finish_reason"] == "length":
            with pytest.raises(Rejected, match="malformed JSON"):
                parse_answers(entry["text"], expected=questions[entry["patch_id"]])
    assert rejected or entries, "the server answered nothing"
    assert all(r.cache_hit for r in again)
    assert [r.turns for r in again] == [r.turns for r in rows]


def test_code_location_has_instructions_its_checks_and_the_llava_export():
    from pathgen_dagster.definitions import defs

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey("instructions")).parent_keys}
    assert parents == {"training_pairs", "patches"}
    export = graph.get(dg.AssetKey("llava_instruct_export"))
    assert {p.to_user_string() for p in export.parent_keys} == {
        "instructions", "training_pairs", "dataset_duplicates", "patches"
    }
    checks = {key.name for key in graph.asset_check_keys if key.asset_key == dg.AssetKey("instructions")}
    assert checks == {"instructions_gate", "instruction_letter_balance", "instruction_expectations"}
