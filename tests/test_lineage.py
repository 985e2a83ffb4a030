"""``pathgen lineage``: the chain of a pair matches the source tables, at the versions used."""

import pytest

from pathgen_dagster.cli import main
from pathgen_dagster.lineage import PAIR_ID, PairNotFound, format_lineage, trace
from tests.assets import test_training_pairs as pipeline
from tests.assets.test_training_pairs import SLIDE_A, SLIDE_B, passing, write_stages

# The lakehouse fixtures of the training_pairs tests: two real slides, stage rows, pairs.
built_template = pipeline.built_template
built = pipeline.built
resources = pipeline.resources

STAGES = ["slide file", "tile", "patch", "description", "revision", "caption", "checks"]


def test_lineage_of_a_pair_matches_the_source_tables(built, resources):
    lakehouse = resources["lakehouse"]
    pair_id = passing(built[SLIDE_A])[0]
    lineage = trace(lakehouse, pair_id)
    assert [step.stage for step in lineage.steps] == STAGES
    steps = {step.table: step for step in lineage.steps}
    assert steps["slides"].version == lineage.pair["slides_version"]
    assert steps["tiles"].version == lakehouse.version("tiles")
    slide = lakehouse.read("slides", slide_id=SLIDE_A).row(0, named=True)
    assert steps["slides"].row["sha256"] == slide["sha256"]
    assert steps["slides"].row["uri"] == slide["uri"]
    tile = lakehouse.read("tiles", slide_id=SLIDE_A).filter(tile_id=pair_id).row(0, named=True)
    assert steps["tiles"].row == tile and steps["tiles"].note == "current version"
    for table in ("patches", "descriptions", "revised_descriptions", "captions", "caption_quality"):
        source = lakehouse.read(table, slide_id=SLIDE_A).filter(patch_id=pair_id)
        expected = source.drop("image_jpeg", strict=False).row(0, named=True)
        assert steps[table].row == expected, table
        assert steps[table].version == lineage.pair[f"{table}_version"]
    assert steps["captions"].row["caption"] == lineage.pair["caption"]
    assert steps["caption_quality"].row["passed"] is True
    text = format_lineage(lineage)
    for stage in STAGES:
        assert f". {stage}" in text
    assert slide["sha256"] in text and "smollm2-135m" in text and "rules-v1" in text


def test_lineage_reads_the_versions_the_pair_was_built_from(built, resources):
    lakehouse = resources["lakehouse"]
    pair_id = passing(built[SLIDE_A])[0]
    built_caption = trace(lakehouse, pair_id).pair["caption"]
    # Captions are rewritten afterwards, but training_pairs is not rebuilt yet.
    write_stages(lakehouse, SLIDE_A, caption_note=" (rewritten)")
    lineage = trace(lakehouse, pair_id)
    caption_step = next(step for step in lineage.steps if step.table == "captions")
    assert caption_step.version < lakehouse.version("captions")
    assert caption_step.row["caption"] == built_caption


def test_pair_ids_name_their_slide_for_pruning():
    assert PAIR_ID.match("CMU-1-Small-Region_x672_y0_s672")["slide_id"] == "CMU-1-Small-Region"
    assert PAIR_ID.match("a_x1_y2_s3_x4_y5_s6")["slide_id"] == "a_x1_y2_s3"
    assert PAIR_ID.match("no-position") is None


def test_unknown_pair_and_cli(built, resources, capsys):
    lakehouse = resources["lakehouse"]
    with pytest.raises(PairNotFound, match="quarantine_report"):
        trace(lakehouse, f"{SLIDE_B}_x0_y0_s1")
    pair_id = passing(built[SLIDE_B])[0]
    assert main(["--lakehouse", lakehouse.root, "lineage", pair_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pair {pair_id}") and "7. checks" in out
    assert main(["--lakehouse", lakehouse.root, "lineage"]) == 0
    assert capsys.readouterr().out.startswith("pair ")
    assert main(["--lakehouse", lakehouse.root, "lineage", "nope"]) == 1
    assert "no pair 'nope'" in capsys.readouterr().err
