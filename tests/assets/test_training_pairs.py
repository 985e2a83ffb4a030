"""training_pairs, dataset_stats, quarantine_report and the exports, through Dagster.

Slides and tiles come from the real pipeline on the sample slides. Rows of the later stages
(patches ... caption_quality) are written here through the lakehouse's schema-checked writer
with the declared columns: real Delta tables, real DuckDB, real JPEG crops of the slides.
The end-to-end test with the real stage assets lives in test_pipeline_to_exports below.
"""

import hashlib
import io
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import webdataset as wds
from deltalake import DeltaTable
from PIL import Image

from assets.dataset_duplicates import dataset_duplicates
from assets.exports import image_folder_csv_export, pathgen_json_export, webdataset_export
from assets.slides import slides
from assets.sql_models import build_model, sql_model_assets
from assets.tiles import tiles
from pathgen_dagster.lib.dataset.exports import read_manifest, verify
from pathgen_dagster.lib.dataset.sql_models import discover
from pathgen_dagster.lib.ingest.wsi import open_slide, read_rgb
from pathgen_dagster.lib.schemas import TABLES, TableSpec
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore
from pathgen_dagster.sensors import register_landing

SLIDE_A = "CMU-1-Small-Region"
SLIDE_B = "synthetic-aperio-40x"  # enough tissue tiles for PATCHES_PER_SLIDE
PATCHES_PER_SLIDE = 4
# Patch positions (index in the slide's tiles) whose caption fails a quality rule.
FAILING = (1, 3)
WHY = "necrosis [not in the revised description]"
MODELS = {asset.key.to_user_string(): asset for asset in sql_model_assets}
EXPORTS = [pathgen_json_export, image_folder_csv_export, webdataset_export]
# The exports leave out what the whole-dataset step removes, so they need it first.
DATASET = [dataset_duplicates, *EXPORTS]


def complete(spec: TableSpec, values: dict) -> dict:
    """``values`` plus a plain value of the right type for every other declared column."""
    row = {}
    for column in spec.columns:
        if column.name in values:
            row[column.name] = values[column.name]
        elif pa.types.is_string(column.type):
            row[column.name] = None if column.nullable else f"{column.name}-fixture"
        elif pa.types.is_integer(column.type):
            row[column.name] = 0
        elif pa.types.is_floating(column.type):
            row[column.name] = 0.0
        elif pa.types.is_boolean(column.type):
            row[column.name] = False
        elif pa.types.is_list(column.type):
            row[column.name] = []
        elif pa.types.is_binary(column.type):
            row[column.name] = b""
        elif pa.types.is_timestamp(column.type):
            row[column.name] = datetime.now(UTC)
        else:
            raise TypeError(f"no fixture value for {column.name}: {column.type}")
    return row


def write_rows(lakehouse: Lakehouse, table: str, slide_id: str, rows: list[dict]) -> int:
    spec = TABLES[table]
    arrow = pa.Table.from_pylist([complete(spec, row) for row in rows], schema=spec.schema)
    return lakehouse.write_slide(table, slide_id, arrow)


def agent(stage: str, model_id: str) -> dict:
    return {
        "backend": "grounded",
        "model_id": model_id,
        "template_id": f"{stage}-v1",
        "template_hash": hashlib.sha256(stage.encode()).hexdigest()[:16],
        "sampling_json": json.dumps({"temperature": 0.0, "seed": 7}),
        "status": "ok",
        "run_id": f"run-{stage}",
        "config_hash": f"cfg-{stage}",
    }


def write_stages(
    lakehouse: Lakehouse, slide_id: str, *, caption_note: str = "", failing=FAILING
) -> list[str]:
    """patches ... caption_quality rows for the slide's first tiles; returns the patch ids."""
    slide = lakehouse.read("slides", slide_id=slide_id).row(0, named=True)
    tile_rows = lakehouse.read("tiles", slide_id=slide_id).sort("tile_id").head(PATCHES_PER_SLIDE)
    assert len(tile_rows) == PATCHES_PER_SLIDE, f"{slide_id} has too few tiles for the fixture"
    patches, descriptions, revisions, captions, verdicts = [], [], [], [], []
    crops = []
    with open_slide(slide["uri"]) as handle:
        for index, tile in enumerate(tile_rows.iter_rows(named=True)):
            # A quarter-size crop keeps the fixture fast; it is still a real region.
            side = tile["size_px"] // 4
            buffer = io.BytesIO()
            Image.fromarray(read_rgb(handle, tile["x"], tile["y"], 0, (side, side))).save(
                buffer, "JPEG", quality=85
            )
            image = buffer.getvalue()
            crops.append(np.asarray(Image.open(io.BytesIO(image)).convert("RGB")))
            patch_id = tile["tile_id"]
            key = {"patch_id": patch_id, "slide_id": slide_id}
            patches.append(
                {
                    **key,
                    "x": tile["x"],
                    "y": tile["y"],
                    "level": 0,
                    "size_px": tile["size_px"],
                    "mpp": tile["mpp"],
                    "reasons": ["attribute", "cluster"] if index % 2 else ["attribute"],
                    "attribute_score": 20.0 + index,
                    "top_prompt": "sheets of atypical cells",
                    "cluster_id": index % 2,
                    "k": 2,
                    "tissue_site": slide["tissue_site"] or "skin",
                    "prompt_library_version": "abc123def456",
                    "encoder_id": "morphology-v1",
                    "text_encoder_id": "all-MiniLM-L6-v2",
                    "selection_config": json.dumps(
                        {"top_k": 64, "dedup_threshold": MorphologyEncoder.dedup_threshold}
                    ),
                    "image_jpeg": image,
                    "image_sha256": hashlib.sha256(image).hexdigest(),
                    "run_id": "run-patches",
                    "config_hash": "cfg-patches",
                }
            )
            text = f"Patch {index} of {slide_id}: sheets of cells with moderate cellularity."
            descriptions.append(
                {**key, **agent("description", "smollm2-135m"), "description": text}
            )
            revisions.append(
                {**key, **agent("revision", "gemma3-270m"), "draft": text, "revised": text}
            )
            caption = f"H&E {slide_id} patch {index}: moderately cellular tissue{caption_note}."
            captions.append(
                {**key, **agent("summary", "gemma3-270m"), "caption": caption, "clip_tokens": 18}
            )
            failed = ["unsupported_claim"] if index in failing else []
            verdicts.append(
                {
                    **key,
                    "caption": caption,
                    "clip_tokens": 18,
                    "failed_rules": failed,
                    "failure_reasons": [f"{rule}: {WHY}" for rule in failed],
                    "unsupported_claims": ["necrosis"] if failed else [],
                    "severe_failure": bool(failed),
                    "quality_score": 0.8 if failed else 1.0,
                    "alignment_score": 0.3,
                    "passed": not failed,
                    "ruleset_version": "rules-v1",
                    "rule_results_json": json.dumps({"unsupported_claim": not failed}),
                    "run_id": "run-quality",
                    "config_hash": "cfg-quality",
                }
            )
    # The real morphology embeddings of the crops (what dataset_duplicates compares).
    vectors, _ = MorphologyEncoder().embed(np.stack(crops), tile_rows["mpp"][0])
    embeddings = [
        {"tile_id": row["patch_id"], "slide_id": slide_id, "encoder_id": "morphology-v1",
         "dim": vectors.shape[1], "embedding": vector.tolist()}
        for row, vector in zip(patches, vectors, strict=True)
    ]
    for table, rows in [
        ("patch_embeddings", embeddings),
        ("patches", patches),
        ("descriptions", descriptions),
        ("revised_descriptions", revisions),
        ("captions", captions),
        ("caption_quality", verdicts),
    ]:
        write_rows(lakehouse, table, slide_id, rows)
    return [row["patch_id"] for row in patches]


def materialize(assets, instance, resources, partition_key=None, run_config=None):
    result = dg.materialize(
        list(assets),
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        pytest.fail(str(failure.step_failure_data.error))
    return result


@pytest.fixture(scope="module")
def built_template(sample_landing: Path, tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """A lakehouse with two real slides through slides + tiles and the stage rows written.

    Built once per module; each test works on a copy (Delta tables are plain folders).
    """
    root = tmp_path_factory.mktemp("template") / "lakehouse"
    lakehouse = Lakehouse(root=str(root))
    resources = {"lakehouse": lakehouse, "slide_store": SlideStore(landing=str(sample_landing))}
    patch_ids = {}
    with dg.instance_for_test() as instance:
        register_landing(instance, lakehouse, sample_landing)
        for slide_id in (SLIDE_A, SLIDE_B):
            materialize([slides, tiles], instance, resources, slide_id)
            patch_ids[slide_id] = write_stages(lakehouse, slide_id)
            materialize([MODELS["training_pairs"]], instance, resources, slide_id)
    return root, patch_ids


@pytest.fixture
def resources(lakehouse: Lakehouse, sample_landing: Path) -> dict:
    # These assets never read the landing zone: the shared one is enough (no copy).
    return {"lakehouse": lakehouse, "slide_store": SlideStore(landing=str(sample_landing))}


@pytest.fixture
def built(built_template, instance, resources, sample_landing: Path) -> dict[str, list[str]]:
    """A copy of the template lakehouse, its slides registered in this test's instance."""
    template, patch_ids = built_template
    lakehouse = resources["lakehouse"]
    shutil.copytree(template, lakehouse.root)
    register_landing(instance, lakehouse, sample_landing)
    return patch_ids


def passing(patch_ids: list[str]) -> list[str]:
    return [p for i, p in enumerate(patch_ids) if i not in FAILING]


def test_training_pairs_hold_only_passed_captions_with_lineage(built, resources):
    lakehouse = resources["lakehouse"]
    pairs = lakehouse.read("training_pairs").sort("pair_id")
    expected = sorted(passing(built[SLIDE_A]) + passing(built[SLIDE_B]))
    assert pairs["pair_id"].to_list() == expected
    assert pairs["passed"].all() and (pairs["pair_id"] == pairs["patch_id"]).all()
    row = pairs.filter(pairs["slide_id"] == SLIDE_A).row(0, named=True)
    slide = lakehouse.read("slides", slide_id=SLIDE_A).row(0, named=True)
    patch = (
        lakehouse.read("patches", slide_id=SLIDE_A)
        .filter(patch_id=row["patch_id"])
        .row(0, named=True)
    )
    assert row["slide_uri"] == slide["uri"] and row["slide_sha256"] == slide["sha256"]
    assert row["slide_run_id"] == slide["run_id"]
    assert row["image_sha256"] == hashlib.sha256(patch["image_jpeg"]).hexdigest()
    assert (row["x"], row["y"], row["size_px"]) == (patch["x"], patch["y"], patch["size_px"])
    assert row["selection_reasons"] == patch["reasons"]
    assert row["description_model_id"] == "smollm2-135m"
    assert row["summary_template_hash"] == hashlib.sha256(b"summary").hexdigest()[:16]
    assert json.loads(row["revision_sampling_json"]) == {"temperature": 0.0, "seed": 7}
    assert (row["patch_run_id"], row["quality_run_id"]) == ("run-patches", "run-quality")
    assert row["ruleset_version"] == "rules-v1" and row["quality_score"] == 1.0
    # Every recorded version is the table version that existed when the slide was built.
    history = {
        table: DeltaTable(lakehouse.uri(table)).version()
        for table in ("slides", "patches", "captions", "caption_quality")
    }
    last = pairs.filter(pairs["slide_id"] == SLIDE_B).row(0, named=True)
    for table, version in history.items():
        assert last[f"{table}_version"] == version
    assert (
        row["config_hash"]
        == MODELS["training_pairs"].code_versions_by_key[dg.AssetKey("training_pairs")]
    )


def test_quarantine_report_and_dataset_stats_read_the_whole_tables(built, instance, resources):
    lakehouse = resources["lakehouse"]
    materialize([MODELS["quarantine_report"], MODELS["dataset_stats"]], instance, resources)
    report = lakehouse.read("quarantine_report").sort("patch_id")
    failed = sorted(p for ids in built.values() for i, p in enumerate(ids) if i in FAILING)
    assert report["patch_id"].to_list() == failed
    assert set(report["reasons"]) == {f"unsupported_claim: {WHY}"}
    assert not set(report["patch_id"]) & set(lakehouse.read("training_pairs")["pair_id"])
    stats = {
        row["tissue_site"]: row for row in lakehouse.read("dataset_stats").iter_rows(named=True)
    }
    whole = stats["all"]
    checked = 2 * PATCHES_PER_SLIDE
    assert (whole["slides"], whole["checked"], whole["pairs"]) == (2, checked, checked - 4)
    assert whole["quarantined"] == 4 and whole["pass_rate"] == pytest.approx(0.5)
    assert whole["clip_tokens_p50"] == 18 and whole["pairs_per_slide"] == 2
    assert json.loads(whole["failures_by_rule_json"]) == {"unsupported_claim": 4}
    assert whole["training_pairs_version"] == lakehouse.version("training_pairs")
    sites = set(stats) - {"all"}
    assert sum(stats[site]["pairs"] for site in sites) == whole["pairs"]


def test_rebuilding_one_slide_changes_only_its_rows(built, instance, resources):
    lakehouse = resources["lakehouse"]
    uri = lakehouse.uri("training_pairs")
    before_b = lakehouse.read("training_pairs", slide_id=SLIDE_B).sort("pair_id")
    files_b = sorted(f for f in DeltaTable(uri).file_uris() if f"slide_id={SLIDE_B}" in f)
    # Slide A's captions are rewritten and re-checked; now patch 1 passes and patch 2 fails.
    write_stages(lakehouse, SLIDE_A, caption_note=" (revised)", failing=(2, 3))
    result = materialize([MODELS["training_pairs"]], instance, resources, SLIDE_A)
    after = lakehouse.read("training_pairs")
    after_a = after.filter(slide_id=SLIDE_A).sort("pair_id")
    expected_a = [p for i, p in enumerate(built[SLIDE_A]) if i not in (2, 3)]
    assert after_a["pair_id"].to_list() == expected_a
    assert all(c.endswith("(revised).") for c in after_a["caption"])
    assert set(after_a["run_id"]) == {result.run_id}
    assert set(after_a["captions_version"]) == {lakehouse.version("captions")}
    assert set(before_b["captions_version"]) == {lakehouse.version("captions") - 1}
    assert after.filter(slide_id=SLIDE_B).sort("pair_id").equals(before_b)
    assert sorted(f for f in DeltaTable(uri).file_uris() if f"slide_id={SLIDE_B}" in f) == files_b
    # The commit replaced slide A's files only.
    [commit] = DeltaTable(uri).history(1)
    assert commit["operation"] == "WRITE" and SLIDE_A in commit["operationParameters"]["predicate"]


def test_a_slide_run_reads_only_that_slides_files(built, resources):
    lakehouse = resources["lakehouse"]
    [model] = [m for m in discover() if m.name == "training_pairs"]
    build = build_model(lakehouse, model, partition_key=SLIDE_B, run_id="explain")
    with lakehouse.connect() as connection:
        plan = "\n".join(
            row[1] for row in connection.sql(f"EXPLAIN ANALYZE {build.sql}").fetchall()
        )
    scans = plan.count("Scanning Files:")
    assert scans == len(model.refs)
    assert plan.count("Scanning Files: 1/2") == scans, plan
    full = build_model(lakehouse, model, partition_key=None, run_id="full")
    assert full.rows.num_rows == lakehouse.read("training_pairs").height


def test_a_missing_source_fails_with_its_name(instance, resources, sample_landing):
    register_landing(instance, resources["lakehouse"], sample_landing)
    result = dg.materialize(
        [MODELS["training_pairs"]],
        partition_key=SLIDE_A,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert SLIDE_A in message and "stage training_pairs" in message
    assert "materialize 'slides' first" in message


def test_exports_round_trip(built, instance, resources):
    lakehouse = resources["lakehouse"]
    materialize(
        DATASET,
        instance,
        resources,
        run_config={"ops": {"webdataset_export": {"config": {"samples_per_shard": 3}}}},
    )
    pairs = lakehouse.read("training_pairs").sort("pair_id")
    captions = dict(zip(pairs["pair_id"], pairs["caption"], strict=True))
    patches = lakehouse.read("patches")
    images = dict(zip(patches["patch_id"], patches["image_jpeg"], strict=True))
    root = Path(lakehouse.root).resolve() / "exports"
    versions = {
        "training_pairs": lakehouse.version("training_pairs"),
        "dataset_duplicates": lakehouse.version("dataset_duplicates"),
    }
    assert lakehouse.read("dataset_duplicates").filter(action="removed").is_empty()

    public = json.loads((root / "pathgen_json" / "pathgen.json").read_text())
    assert len(public) == pairs.height
    first = pairs.row(0, named=True)
    assert public[0] == {
        "wsi_id": Path(first["slide_file_name"]).stem,
        "position": [str(first["x"]), str(first["y"])],
        "caption": first["caption"],
        "file_id": first["slide_sha256"],
    }
    assert read_manifest(root / "pathgen_json")["source_versions"] == versions

    folder = root / "image_folder_csv"
    frame = pd.read_csv(folder / "train.csv", sep="\t")
    assert len(frame) == pairs.height
    for path, title, pair_id in frame.itertuples(index=False):
        assert title == captions[pair_id]
        assert Image.open(path).format == "JPEG"
        assert Path(path).read_bytes() == images[pair_id]

    shards = root / "webdataset"
    manifest = read_manifest(shards)
    assert manifest["pairs"] == pairs.height and manifest["counts"]["shards"] == 2
    assert manifest["source_versions"] == {**versions, "patches": lakehouse.version("patches")}
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json")
    samples = list(dataset)
    assert len(samples) == pairs.height
    for image, caption, metadata in samples:
        assert caption == captions[metadata["pair_id"]]
        reference = Image.open(io.BytesIO(images[metadata["pair_id"]])).convert("RGB")
        assert image.size == reference.size and image.tobytes() == reference.tobytes()
    for export in ("pathgen_json", "image_folder_csv", "webdataset"):
        assert verify(root / export) == []
    event = instance.get_latest_materialization_event(dg.AssetKey("webdataset_export"))
    assert event.asset_materialization.metadata["pairs"].value == pairs.height


def test_an_export_after_patches_changed_fails_and_keeps_the_old_one(built, instance, resources):
    lakehouse = resources["lakehouse"]
    materialize([dataset_duplicates, webdataset_export], instance, resources)
    old = read_manifest(Path(lakehouse.root).resolve() / "exports" / "webdataset")
    # Slide A's patches are re-selected (new crops) but training_pairs was not rebuilt.
    patches = lakehouse.read("patches", slide_id=SLIDE_A).to_dicts()
    for row in patches:
        row["image_jpeg"] = row["image_jpeg"] + b"\x00"
    write_rows(lakehouse, "patches", SLIDE_A, patches)
    result = dg.materialize(
        [webdataset_export], instance=instance, resources=resources, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "re-materialize training_pairs for slide 'CMU-1-Small-Region'" in str(
        failure.step_failure_data.error
    )
    kept = read_manifest(Path(lakehouse.root).resolve() / "exports" / "webdataset")
    assert kept == old


def test_pipeline_to_exports(instance, lakehouse, sample_landing):
    """The real chain on the real CMU slide (grounded agents), then every SQL model and
    export: pairs are exactly the captions caption_quality passed, lineage points at the
    real rows, and every export holds the pairs."""
    from assets.caption_quality import caption_quality
    from assets.captions import captions, descriptions, revised_descriptions
    from assets.patches import patch_embeddings, patches
    from pathgen_dagster.lineage import trace
    from pathgen_dagster.resources.encoders import Encoders
    from pathgen_dagster.resources.llm import LLMServer

    resources = {
        "lakehouse": lakehouse,
        "slide_store": SlideStore(landing=str(sample_landing)),
        "encoders": Encoders(device="cpu"),
        "llm": LLMServer(),
    }
    register_landing(instance, lakehouse, sample_landing)
    chain = [slides, tiles, patch_embeddings, patches, descriptions, revised_descriptions]
    chain += [captions, caption_quality, MODELS["training_pairs"]]
    materialize(chain, instance, resources, SLIDE_A)
    materialize(
        [MODELS["quarantine_report"], MODELS["dataset_stats"], *DATASET], instance, resources
    )

    verdicts = lakehouse.read("caption_quality", slide_id=SLIDE_A)
    pairs = lakehouse.read("training_pairs").sort("pair_id")
    assert verdicts.height > 0
    assert pairs["pair_id"].to_list() == sorted(verdicts.filter(passed=True)["patch_id"])
    assert sorted(lakehouse.read("quarantine_report")["patch_id"]) == sorted(
        verdicts.filter(passed=False)["patch_id"]
    )
    stats = lakehouse.read("dataset_stats").filter(tissue_site="all").row(0, named=True)
    assert (stats["checked"], stats["pairs"]) == (verdicts.height, pairs.height)
    root = Path(lakehouse.root).resolve() / "exports"
    for export in ("pathgen_json", "image_folder_csv", "webdataset"):
        manifest = read_manifest(root / export)
        assert manifest["pairs"] == pairs.height and verify(root / export) == []
    if pairs.height:
        lineage = trace(lakehouse, pairs["pair_id"][0])
        assert all(step.row is not None for step in lineage.steps)
        caption = next(step for step in lineage.steps if step.table == "captions").row
        assert caption["caption"] == pairs["caption"][0] and caption["backend"] == "grounded"


def _copy_embedding(lakehouse: Lakehouse, source: str, target: str) -> None:
    """Give ``target`` the image embedding of ``source``: a re-scan of the same field."""
    frame = lakehouse.read("patch_embeddings")
    vector = frame.filter(tile_id=source)["embedding"][0].to_list()
    slide_id = frame.filter(tile_id=target)["slide_id"][0]
    rows = lakehouse.read("patch_embeddings", slide_id=slide_id).to_dicts()
    for row in rows:
        if row["tile_id"] == target:
            row["embedding"] = vector
    write_rows(lakehouse, "patch_embeddings", slide_id, rows)


def test_near_duplicate_images_across_slides_are_removed_whatever_the_order(
    built, instance, resources
):
    lakehouse = resources["lakehouse"]
    kept, copy = passing(built[SLIDE_A])[0], passing(built[SLIDE_B])[0]
    assert kept < copy  # the lowest pair id of a group stays
    _copy_embedding(lakehouse, kept, copy)
    materialize([dataset_duplicates, pathgen_json_export], instance, resources)
    found = lakehouse.read("dataset_duplicates")
    removed = found.filter(action="removed")
    assert removed.select("pair_id", "duplicate_of", "kind").rows() == [(copy, kept, "image")]
    assert removed["similarity"][0] == pytest.approx(1.0)
    assert removed["threshold"][0] == MorphologyEncoder.dedup_threshold
    # Captions differ per patch here; the same caption twice is reported, never removed.
    assert found.filter(kind="caption").is_empty()
    pairs = lakehouse.read("training_pairs")
    public = json.loads(
        (Path(lakehouse.root).resolve() / "exports" / "pathgen_json" / "pathgen.json").read_text()
    )
    assert len(public) == pairs.height - 1  # the pair stays in training_pairs (lineage)
    manifest = read_manifest(Path(lakehouse.root).resolve() / "exports" / "pathgen_json")
    assert manifest["source_versions"]["dataset_duplicates"] == lakehouse.version("dataset_duplicates")
    # The other way round (the copy's slide committed last, then the original's): the same.
    _copy_embedding(lakehouse, copy, kept)
    materialize([dataset_duplicates], instance, resources)
    again = lakehouse.read("dataset_duplicates").filter(action="removed")
    assert again.select("pair_id", "duplicate_of").rows() == [(copy, kept)]


def test_repeated_captions_are_reported_not_removed(built, instance, resources):
    lakehouse = resources["lakehouse"]
    first, second = passing(built[SLIDE_A])[0], passing(built[SLIDE_B])[0]
    rows = lakehouse.read("training_pairs", slide_id=SLIDE_B).to_dicts()
    caption = lakehouse.read("training_pairs").filter(pair_id=first)["caption"][0]
    for row in rows:
        if row["pair_id"] == second:
            row["caption"] = caption.upper()  # the same words, differently cased
    write_rows(lakehouse, "training_pairs", SLIDE_B, rows)
    materialize([dataset_duplicates], instance, resources)
    found = lakehouse.read("dataset_duplicates")
    assert found.select("pair_id", "kind", "action", "duplicate_of").rows() == [
        (second, "caption", "reported", first)
    ]


def test_code_location_shows_the_chain_with_sql_models_and_exports():
    from pathgen_dagster.definitions import defs

    graph = defs().resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["training_pairs"] == {
        "slides",
        "patches",
        "descriptions",
        "revised_descriptions",
        "captions",
        "caption_quality",
    }
    assert "training_pairs" in parents["dataset_stats"]
    assert parents["webdataset_export"] == {"training_pairs", "dataset_duplicates", "patches"}
    assert parents["dataset_duplicates"] == {"training_pairs", "patch_embeddings"}
    assert graph.get(dg.AssetKey("training_pairs")).partitions_def is not None
    for name in ("dataset_stats", "quarantine_report", "dataset_duplicates", "pathgen_json_export"):
        assert graph.get(dg.AssetKey(name)).partitions_def is None


def test_cli_export_builds_summaries_and_exports(built, resources, tmp_path, monkeypatch, capsys):
    from pathgen_dagster.cli import main

    lakehouse = resources["lakehouse"]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("PATHGEN_LAKEHOUSE", lakehouse.root)
    monkeypatch.setenv("PATHGEN_LANDING", str(tmp_path))
    (tmp_path / "dagster_home").mkdir()
    assert main(["--lakehouse", lakehouse.root, "export"]) == 0
    out = capsys.readouterr().out
    pairs = lakehouse.read("training_pairs").height
    for name in ("pathgen_json_export", "image_folder_csv_export", "webdataset_export"):
        assert re.search(rf"{name}\s+{pairs} rows", out), out
    assert lakehouse.read("quarantine_report").height == 2 * len(FAILING)
    assert main(["--lakehouse", lakehouse.root, "export", "--only", "nope"]) == 2
