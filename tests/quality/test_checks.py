"""The caption_quality asset and the per-slide checks, through real ``dg.materialize`` runs.

Rows of ``patches``, ``revised_descriptions``, ``descriptions`` and ``captions`` are written
through the lakehouse's schema-checked writer into real Delta tables; the sentence encoder,
tokenizer, lexicon and great-expectations are the real ones. The last test runs the real
chain (slides ... captions with the grounded backend) on a real sample slide.
"""

import io
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from assets.caption_quality import caption_quality
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.quality.fidelity import RULE_NAMES
from pathgen_dagster.lib.schemas import TABLES
from pathgen_dagster.partitions import SLIDES_PARTITION, slide_partitions
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality import checks
from quality.expectations import data_docs_dir
from quality.report import DATA_DOCS_URL_ENV, data_docs_links, quality_report, serve_data_docs
from tests.lib.quality.test_fidelity import DRAFT, EDITS, LOW, REVISED

GOOD_CAPTIONS = [
    "Loose fibrous stroma with scattered small lymphocytes and small uniform nuclei.",
    "Fibrous tissue with collagen bundles and a few fibroblasts with spindle-shaped nuclei.",
    "Scattered small lymphocytes lie in loose fibrous stroma with collagen bundles.",
    "Fibroblasts with spindle-shaped nuclei in fibrous stroma, and no necrosis.",
]
# Each fails at least one severe rule: a claim the description does not make, a claim the
# measurements contradict, meta language, or CLIP overflow.
BAD_CAPTIONS = [
    "Dense lymphocytic infiltrate with high cellularity and extensive necrosis.",
    "As an AI language model I cannot see this image, but it may show tumour cells.",
    "Sheets of poorly differentiated carcinoma cells with marked nuclear pleomorphism.",
    " ".join(["Fibrous stroma with collagen bundles and scattered small lymphocytes,"] * 6)
    + " and small uniform nuclei.",
]


@dg.asset(name="training_pairs_probe", partitions_def=slide_partitions, deps=["caption_quality"])
def training_pairs_probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Stands for ``training_pairs``: anything downstream of the gated table."""
    return dg.MaterializeResult(metadata={"built_for": context.partition_key})


def stand_in(name: str) -> dg.AssetsDefinition:
    """A partitioned asset named ``name`` that writes nothing: its checks then read the rows
    this test wrote (asset checks on a partitioned external asset cannot run alone)."""

    @dg.asset(name=name, partitions_def=slide_partitions)
    def _asset() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return _asset


def row(table: str, values: dict) -> dict:
    """``values`` plus a plain value of the declared type for every other column."""
    filled = {}
    for column in TABLES[table].columns:
        if column.name in values:
            filled[column.name] = values[column.name]
        elif pa.types.is_string(column.type):
            filled[column.name] = None if column.nullable else f"{column.name}-test"
        elif pa.types.is_integer(column.type):
            filled[column.name] = 0
        elif pa.types.is_floating(column.type):
            filled[column.name] = 0.0
        elif pa.types.is_boolean(column.type):
            filled[column.name] = False
        elif pa.types.is_list(column.type):
            filled[column.name] = []
        elif pa.types.is_binary(column.type):
            filled[column.name] = b""
        else:
            filled[column.name] = datetime.now(UTC)
    return filled


def write(lakehouse: Lakehouse, table: str, slide_id: str, rows: list[dict]) -> None:
    spec = TABLES[table]
    lakehouse.write_slide(
        table, slide_id, pa.Table.from_pylist([row(table, r) for r in rows], schema=spec.schema)
    )


def write_slide(
    lakehouse: Lakehouse,
    slide_id: str,
    captions: list[str | None],
    *,
    facts=LOW,
    status: str = "ok",
    description: str = REVISED,
) -> list[str]:
    """Patches, descriptions, revisions and captions of one crafted slide."""
    patch_ids = [f"{slide_id}_x{i * 672}_y0_s672" for i in range(len(captions))]
    keys = [{"patch_id": pid, "slide_id": slide_id} for pid in patch_ids]
    write(
        lakehouse,
        "patches",
        slide_id,
        [k | {"facts_json": json.dumps(facts.to_dict()), "tissue_site": "skin"} for k in keys],
    )
    write(
        lakehouse,
        "descriptions",
        slide_id,
        [
            k
            | {
                "description": description,
                "facts_json": json.dumps(facts.to_dict()),
                "status": "ok",
            }
            for k in keys
        ],
    )
    write(
        lakehouse,
        "revised_descriptions",
        slide_id,
        [
            k
            | {
                "draft": DRAFT,
                "revised": REVISED,
                "edits_json": json.dumps(EDITS),
                "n_edits": 1,
                # the second detector agrees with the band the text was written from
                "evidence_json": Evidence(
                    "watershed-test", 12, 900.0, facts.cellularity, facts.cellularity
                ).to_json(),
            }
            for k in keys
        ],
    )
    tokens = [len(c.split()) * 2 if c else 0 for c in captions]
    write(
        lakehouse,
        "captions",
        slide_id,
        [
            k | {"caption": c, "clip_tokens": t, "fits_clip": 0 < t <= 77, "status": status}
            for k, c, t in zip(keys, captions, tokens, strict=True)
        ],
    )
    return patch_ids


@pytest.fixture
def resources(lakehouse: Lakehouse) -> dict:
    return {"lakehouse": lakehouse, "encoders": Encoders(device="cpu")}


def materialize_quality(slide_id: str, instance, resources, *extra) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(SLIDES_PARTITION, [slide_id])
    return dg.materialize(
        [
            caption_quality,
            checks.caption_fidelity_gate,
            checks.caption_expectations,
            training_pairs_probe,
            *extra,
        ],
        partition_key=slide_id,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_good_slide_passes_the_gate_and_builds_downstream(instance, resources, lakehouse):
    write_slide(lakehouse, "good-slide", GOOD_CAPTIONS)
    result = materialize_quality("good-slide", instance, resources)
    assert result.success
    gate = evaluations(result)[checks.CAPTION_FIDELITY_GATE]
    assert gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    for name in RULE_NAMES:
        assert f"pass_rate_{name}" in gate.metadata
    assert gate.metadata["pass_rate_faithful_to_description"].value == 1.0
    assert gate.metadata["captions"].value == 4
    probe = instance.get_latest_materialization_event(dg.AssetKey("training_pairs_probe"))
    assert probe is not None and probe.asset_materialization.partition == "good-slide"
    rows = lakehouse.read("caption_quality", slide_id="good-slide")
    assert len(rows) == 4 and rows["passed"].all()
    assert set(json.loads(rows["rule_results_json"][0])) == set(RULE_NAMES)


def test_great_expectations_suite_writes_data_docs(instance, resources, lakehouse):
    write_slide(lakehouse, "good-slide", GOOD_CAPTIONS)
    result = materialize_quality("good-slide", instance, resources)
    suite = evaluations(result)[checks.CAPTION_EXPECTATIONS]
    assert suite.passed, suite.description
    assert suite.severity == dg.AssetCheckSeverity.WARN
    page = Path(suite.metadata["data_docs"].value)
    assert page.is_file() and page.suffix == ".html"
    assert page.is_relative_to(data_docs_dir(lakehouse.root))
    assert "good-slide" in page.read_text()
    index = Path(suite.metadata["data_docs_index"].value)
    assert index == data_docs_dir(lakehouse.root) / "index.html" and index.is_file()
    assert suite.metadata["evaluated_expectations"].value >= 15
    assert suite.metadata["successful_expectations"].value == suite.metadata["evaluated_expectations"].value
    assert "data_docs_url" not in suite.metadata  # no docs server named: no dead link
    # What a browser gets from `pathgen docs`: the index and the page the check names.
    relative = page.relative_to(data_docs_dir(lakehouse.root)).as_posix()
    links = data_docs_links(relative, {DATA_DOCS_URL_ENV: "http://127.0.0.1:3001/"})
    assert links["data_docs_url"].value == f"http://127.0.0.1:3001/{relative}"
    with serve_data_docs(lakehouse, port=0) as url:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and "good-slide" in response.read().decode()
        with urllib.request.urlopen(url.removesuffix("index.html") + relative, timeout=30) as response:
            assert "good-slide" in response.read().decode()


def test_a_slide_whose_captions_all_fail_blocks_downstream(instance, resources, lakehouse):
    patch_ids = write_slide(lakehouse, "bad-slide", BAD_CAPTIONS)
    result = materialize_quality("bad-slide", instance, resources)
    assert not result.success
    gate = evaluations(result)[checks.CAPTION_FIDELITY_GATE]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    message = gate.description
    assert "slide 'bad-slide'" in message and "4 of 4 captions (100%)" in message
    assert "faithful_to_description" in message and "Fix:" in message
    assert gate.metadata["severe_failure_rate"].value == 1.0
    # The downstream asset was not built, and the run says which check stopped it.
    assert instance.get_latest_materialization_event(dg.AssetKey("training_pairs_probe")) is None
    skipped = [e for e in result.all_events if e.step_key == "training_pairs_probe"]
    assert not any(e.is_successful_output for e in skipped)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert checks.CAPTION_FIDELITY_GATE in failure.step_failure_data.error.message
    # Quarantine, not deletion: every caption is still there with its reasons.
    quarantined = lakehouse.sql(
        "SELECT patch_id, failed_rules, failure_reasons FROM caption_quality "
        "WHERE slide_id = 'bad-slide' AND NOT passed ORDER BY patch_id"
    )
    assert quarantined["patch_id"].to_list() == sorted(patch_ids)
    reasons = dict(zip(quarantined["patch_id"], quarantined["failed_rules"].to_list(), strict=True))
    by_caption = dict(zip(patch_ids, BAD_CAPTIONS, strict=True))
    for pid, failed in reasons.items():
        caption = by_caption[pid]
        if caption.startswith("Dense"):
            assert {"faithful_to_description", "caption_grounded"} <= set(failed)
        elif caption.startswith("As an AI"):
            assert "no_meta_language" in failed
        elif caption.startswith("Sheets"):
            assert "faithful_to_description" in failed
        else:
            assert "clip_length" in failed
    assert len(lakehouse.read("captions", slide_id="bad-slide")) == 4


def test_the_gate_rate_is_configurable(instance, resources, lakehouse):
    write_slide(lakehouse, "mixed", GOOD_CAPTIONS[:3] + BAD_CAPTIONS[:1])
    instance.add_dynamic_partitions(SLIDES_PARTITION, ["mixed"])
    assets = [caption_quality, checks.caption_fidelity_gate, training_pairs_probe]
    run = {
        "ops": {
            f"caption_quality_{checks.CAPTION_FIDELITY_GATE}": {"config": {"max_severe_failure_rate": 0.3}}
        }
    }
    result = dg.materialize(
        assets, partition_key="mixed", instance=instance, resources=resources, run_config=run
    )
    assert result.success  # 1 of 4 (25 %) is within 30 %
    assert not dg.materialize(
        assets, partition_key="mixed", instance=instance, resources=resources, raise_on_error=False
    ).success  # but not within the default 20 %


def test_a_passed_gate_with_no_passing_caption_says_it_yields_no_pairs(
    instance, resources, lakehouse
):
    write_slide(lakehouse, "first", GOOD_CAPTIONS)
    assert materialize_quality("first", instance, resources).success
    # A caption cut before its full stop fails a warn rule only: quarantined, not blocking.
    write_slide(lakehouse, "copies", [GOOD_CAPTIONS[0].rstrip(".")])
    result = materialize_quality("copies", instance, resources)
    gate = evaluations(result)[checks.CAPTION_FIDELITY_GATE]
    assert gate.passed
    assert "0 of 1 captions passed every rule" in gate.description
    assert "yields NO training pairs" in gate.description
    assert "may enter training_pairs" not in gate.description
    first = evaluations(materialize_quality("first", instance, resources))
    text = first[checks.CAPTION_FIDELITY_GATE].description
    assert f"{len(GOOD_CAPTIONS)} of {len(GOOD_CAPTIONS)} captions passed every rule" in text


def test_a_slide_with_no_pairs_gets_a_warning_on_training_pairs(instance, resources, lakehouse):
    from assets.sql_models import sql_model_assets

    [training_pairs] = [a for a in sql_model_assets if a.key.to_user_string() == "training_pairs"]
    write_slide(lakehouse, "first", GOOD_CAPTIONS)
    write_slide(lakehouse, "copies", [GOOD_CAPTIONS[0].rstrip(".")])
    found = {}
    for slide_id in ("first", "copies"):
        write(lakehouse, "slides", slide_id, [{"slide_id": slide_id}])  # training_pairs joins it
        result = materialize_quality(
            slide_id, instance, resources, training_pairs, checks.training_pairs_yield
        )
        assert result.success
        found[slide_id] = evaluations(result)[checks.TRAINING_PAIRS_YIELD]
    assert found["first"].passed
    assert found["first"].metadata["training_pairs"].value == len(GOOD_CAPTIONS)
    empty = found["copies"]
    assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
    assert "yields NO training pairs: all 1 checked captions were quarantined" in empty.description
    assert empty.metadata["training_pairs"].value == 0 and empty.metadata["quarantined"].value == 1


def test_a_slides_verdicts_ignore_other_slides_but_catch_its_own_duplicates(
    instance, resources, lakehouse
):
    # Issue 16: a verdict that depends on which slide was committed first is not a verdict.
    # A copy of another slide's caption is left to the whole-dataset step; a copy inside
    # one slide is still quarantined.
    write_slide(lakehouse, "first", GOOD_CAPTIONS)
    assert materialize_quality("first", instance, resources).success
    write_slide(lakehouse, "second", [GOOD_CAPTIONS[0].upper(), GOOD_CAPTIONS[0]])
    materialize_quality("second", instance, resources)
    rows = lakehouse.read("caption_quality", slide_id="second").sort("patch_id")
    flagged = [r for r in rows.iter_rows(named=True) if "unique_caption" in r["failed_rules"]]
    assert len(flagged) == 1 and flagged[0]["duplicate_of"].startswith("second_")
    assert materialize_quality("first", instance, resources).success
    assert lakehouse.read("caption_quality", slide_id="first")["passed"].all()


def test_warning_checks_on_captions_and_descriptions(instance, resources, lakehouse):
    contradicting = REVISED.replace("loose fibrous stroma", "a dense lymphocytic infiltrate")
    write_slide(lakehouse, "warned", [GOOD_CAPTIONS[0], None], status="fallback", description=contradicting)
    instance.add_dynamic_partitions(SLIDES_PARTITION, ["warned"])
    result = dg.materialize(
        [
            stand_in("captions"),
            stand_in("descriptions"),
            checks.captions_fit_clip_window,
            checks.caption_agent_failures,
            checks.descriptions_grounded,
        ],
        partition_key="warned",
        instance=instance,
        resources=resources,
    )
    assert result.success  # warnings never fail the run
    found = evaluations(result)
    assert all(e.severity == dg.AssetCheckSeverity.WARN for e in found.values())
    clip = found[checks.CAPTIONS_FIT_CLIP]
    assert not clip.passed and clip.metadata["share_fitting_clip"].value == 0.5
    agents = found[checks.CAPTION_AGENT_FAILURES]
    assert not agents.passed and agents.metadata["failure_or_fallback_rate"].value == 1.0
    grounded = found[checks.DESCRIPTIONS_GROUNDED]
    assert not grounded.passed and grounded.metadata["contradicted"].value == 2
    assert "dense lymphocytic infiltrate" in grounded.metadata["examples"].value


def test_quality_report(instance, resources, lakehouse):
    write_slide(lakehouse, "good-slide", GOOD_CAPTIONS)
    write_slide(lakehouse, "bad-slide", BAD_CAPTIONS)
    materialize_quality("good-slide", instance, resources)
    materialize_quality("bad-slide", instance, resources)
    report = quality_report(lakehouse)
    assert report.rules["rule"].to_list() == list(RULE_NAMES)
    assert report.rules.filter(rule="non_empty")["pass_rate"][0] == 1.0
    assert report.rules.filter(rule="faithful_to_description")["pass_rate"][0] < 1.0
    assert report.slides.sort("slide_id")["gate"].to_list() == ["BLOCKED", "pass"]
    assert Path(report.data_docs) == data_docs_dir(lakehouse.root) / "index.html"
    text = str(report)
    assert "faithful_to_description" in text and str(report.data_docs) in text
    empty = quality_report(Lakehouse(root=str(Path(lakehouse.root).parent / "empty")))
    assert empty.slides.is_empty() and empty.data_docs is None


def test_definitions_include_the_quality_checks():
    from pathgen_dagster.definitions import defs

    definitions = defs()
    check_names = {key.name for key in definitions.resolve_asset_graph().asset_check_keys}
    assert {
        checks.CAPTION_FIDELITY_GATE,
        checks.CAPTION_EXPECTATIONS,
        checks.CAPTIONS_FIT_CLIP,
        checks.CAPTION_AGENT_FAILURES,
        checks.DESCRIPTIONS_GROUNDED,
    } <= check_names


def test_checks_on_a_real_materialized_slide(instance, lakehouse, landing):
    """The real chain on the real CMU slide: slides ... captions (grounded backend), then
    caption_quality and every check in the same run, as the code location runs them."""
    from assets.captions import captions, descriptions, revised_descriptions
    from assets.patches import patch_embeddings, patches
    from assets.slides import slides
    from assets.tiles import tiles
    from pathgen_dagster.resources.llm import LLMServer
    from pathgen_dagster.resources.slide_store import SlideStore
    from pathgen_dagster.sensors import register_landing

    slide_id = "CMU-1-Small-Region"
    register_landing(instance, lakehouse, landing)
    chain = [slides, tiles, patch_embeddings, patches, descriptions, revised_descriptions, captions]
    quality = [
        caption_quality,
        checks.caption_fidelity_gate,
        checks.caption_expectations,
        checks.captions_fit_clip_window,
        checks.caption_agent_failures,
        checks.descriptions_grounded,
        training_pairs_probe,
    ]
    result = dg.materialize(
        chain + quality,
        partition_key=slide_id,
        instance=instance,
        resources={
            "lakehouse": lakehouse,
            "slide_store": SlideStore(landing=str(landing)),
            "encoders": Encoders(device="cpu"),
            "llm": LLMServer(),
        },
        raise_on_error=False,
    )
    found = evaluations(result)
    assert result.success, {name: e.description for name, e in found.items() if not e.passed}
    assert set(found) == {
        checks.CAPTION_FIDELITY_GATE,
        checks.CAPTION_EXPECTATIONS,
        checks.CAPTIONS_FIT_CLIP,
        checks.CAPTION_AGENT_FAILURES,
        checks.DESCRIPTIONS_GROUNDED,
    }
    # Grounded captions are faithful by construction: every check passes on them.
    assert all(e.passed for e in found.values()), {n: e.description for n, e in found.items()}
    rows = lakehouse.read("caption_quality", slide_id=slide_id)
    captions_rows = lakehouse.read("captions", slide_id=slide_id)
    assert len(rows) == len(captions_rows) > 0
    assert rows["caption"].to_list() == captions_rows.sort("patch_id")["caption"].to_list()
    assert rows["alignment_mode"].unique().to_list() == ["minilm_facts"]
    assert Path(found[checks.CAPTION_EXPECTATIONS].metadata["data_docs"].value).is_file()
    report = quality_report(lakehouse)
    assert report.slides["slide_id"].to_list() == [slide_id]
    assert report.slides["gate"].to_list() == ["pass"]


def test_a_slide_without_captions_passes_with_nothing_to_train_on(instance, resources, lakehouse):
    write_slide(lakehouse, "other", GOOD_CAPTIONS[:1])  # the tables exist ...
    write_slide(lakehouse, "no-tissue", [])  # ... and this slide has no patches at all
    result = materialize_quality("no-tissue", instance, resources)
    assert result.success
    gate = evaluations(result)[checks.CAPTION_FIDELITY_GATE]
    assert gate.passed and "no captions" in gate.description
    assert lakehouse.read("caption_quality", slide_id="no-tissue").is_empty()


class ColourClip:
    """Stands in for an open_clip model, which no package here carries (FACTS.md): images
    embed as their unit mean colour, texts as a fixed unit vector per word count."""

    def embed_images(self, tiles):
        means = tiles.reshape(len(tiles), -1, 3).mean(axis=1)
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def encode(self, texts):
        vectors = np.array([[1.0, len(t.split()) % 3, 1.0] for t in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_clip_scores_decode_the_patch_jpegs_and_score_each_pair():
    from types import SimpleNamespace

    from assets.caption_quality import clip_scores

    def jpeg(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    encoders = SimpleNamespace(clip=ColourClip())
    scores = clip_scores(
        encoders, [jpeg((200, 40, 120)), jpeg((90, 90, 200)), None], ["Pink stroma.", None, "x"]
    )
    assert scores[1] is None and scores[2] is None
    image = np.array([200, 40, 120]) / np.linalg.norm([200, 40, 120])
    text = np.array([1.0, 2.0, 1.0]) / np.linalg.norm([1.0, 2.0, 1.0])
    assert scores[0] == pytest.approx(100 * image @ text, abs=1.0)  # JPEG shifts colours a bit
