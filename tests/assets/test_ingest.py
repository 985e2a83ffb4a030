"""slides + tiles through Dagster: definitions, sensor, materialize, DuckDB, bad input."""

from pathlib import Path

import dagster as dg
import pytest

from assets.slides import slides
from assets.tiles import tiles
from pathgen_dagster.lib.ingest.samples import write_faulty_files
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.sensors import landing_sensor, register_landing
from tests.conftest import write_blank_slide


def materialize_slide(slide_id: str, instance, resources, selection=(slides, tiles)):
    return dg.materialize(
        list(selection),
        partition_key=slide_id,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_definitions_load():
    from pathgen_dagster.definitions import defs

    definitions = defs()
    keys = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    assert {"slides", "tiles", "slide_errors"} <= keys
    definitions.resolve_implicit_global_asset_job_def()


def test_sensor_registers_readable_slides_and_records_errors(instance, resources, landing: Path):
    write_faulty_files(landing)
    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = landing_sensor(context)
    [request] = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == [
        "CMU-1-Small-Region",
        "synthetic-aperio-20x",
        "synthetic-aperio-40x",
        "synthetic-generic-20x",
    ]
    errors = resources["lakehouse"].read("slide_errors")
    assert sorted(errors["slide_id"]) == ["empty-upload", "notes-not-a-slide", "truncated-scan"]
    assert set(errors["stage"]) == {"registry"}
    # The rejections reach the UI: an observation of the slide_errors asset with a preview.
    [observation] = result.asset_events
    assert observation.asset_key == dg.AssetKey("slide_errors")
    assert observation.metadata["dagster/row_count"].value == 3
    assert "truncated-scan.svs" in observation.metadata["preview"].value
    # ... and the tick's own message names them with their reasons beside the new slides.
    message = result.skip_reason.skip_message
    assert message.startswith("4 new slide(s) registered; 3 file(s) rejected"), message
    for name in ("truncated-scan.svs: ", "notes-not-a-slide.svs: ", "empty-upload.tiff: "):
        assert name in message, message
    assert "truncated" in message and "slide_errors" in message
    # A tick with nothing new says so, and names no rejection twice.
    instance.add_dynamic_partitions(SLIDES_PARTITION, list(request.partition_keys))
    again = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert again.skip_reason and again.skip_reason.skip_message == "no new slides"


def test_register_in_capped_batches(instance, resources, landing: Path):
    added, rejected = register_landing(instance, resources["lakehouse"], landing, batch_size=1)
    assert len(added) == 4 and not rejected
    assert sorted(instance.get_dynamic_partitions(SLIDES_PARTITION)) == sorted(added)
    again, _ = register_landing(instance, resources["lakehouse"], landing, batch_size=1)
    assert again == []


def test_materialize_one_real_slide_and_query_it(instance, resources, landing: Path):
    register_landing(instance, resources["lakehouse"], landing)
    result = materialize_slide("CMU-1-Small-Region", instance, resources)
    assert result.success
    lakehouse = resources["lakehouse"]
    registry = lakehouse.read("slides").row(0, named=True)
    assert registry["vendor"] == "aperio" and registry["mpp_x"] == pytest.approx(0.499)
    assert registry["width"] == 2220 and len(registry["sha256"]) == 64
    answer = lakehouse.sql(
        "SELECT slide_id, count(*) AS tiles, min(tissue_fraction) AS lowest FROM tiles GROUP BY 1"
    )
    assert answer["slide_id"].to_list() == ["CMU-1-Small-Region"]
    assert answer["tiles"][0] >= 2 and answer["lowest"][0] > 0.5
    first_ids = lakehouse.read("tiles")["tile_id"].sort().to_list()
    assert materialize_slide("CMU-1-Small-Region", instance, resources).success
    assert lakehouse.read("tiles")["tile_id"].sort().to_list() == first_ids
    materialization = instance.get_latest_materialization_event(dg.AssetKey("tiles"))
    assert "tissue mask and tile grid" in materialization.asset_materialization.metadata


def test_second_slide_leaves_the_first_intact_and_sql_prunes(instance, resources, landing: Path):
    register_landing(instance, resources["lakehouse"], landing)
    lakehouse = resources["lakehouse"]
    assert materialize_slide("CMU-1-Small-Region", instance, resources).success
    before = lakehouse.read("tiles", slide_id="CMU-1-Small-Region")
    assert materialize_slide("synthetic-aperio-20x", instance, resources).success
    assert lakehouse.read("tiles", slide_id="CMU-1-Small-Region").equals(before)
    with lakehouse.connect() as connection:
        plan = connection.sql(
            "EXPLAIN ANALYZE SELECT count(*) FROM tiles WHERE slide_id = 'CMU-1-Small-Region'"
        ).fetchall()
    text = "\n".join(row[1] for row in plan)
    assert "Total Files Read: 1" in text or "Files Read: 1" in text, text


def test_bad_slide_fails_with_its_name_and_others_go_on(instance, resources, landing: Path):
    register_landing(instance, resources["lakehouse"], landing)
    write_blank_slide(landing / "all glass.svs")
    assert materialize_slide("CMU-1-Small-Region", instance, resources).success
    # The file of a registered slide is corrupted after registration.
    (landing / "synthetic-generic-20x.tiff").write_bytes(b"garbage")
    broken = materialize_slide("synthetic-generic-20x", instance, resources)
    assert not broken.success
    failure = next(e for e in broken.all_events if e.is_step_failure)
    assert "synthetic-generic-20x" in str(failure.step_failure_data.error)
    assert "stage slides" in str(failure.step_failure_data.error)
    lakehouse = resources["lakehouse"]
    assert lakehouse.read("slide_errors")["slide_id"].to_list() == ["synthetic-generic-20x"]
    glass_id = next(key for key in _register(instance, resources, landing) if key.startswith("all_glass"))
    assert materialize_slide(glass_id, instance, resources).success
    assert lakehouse.read("tiles", slide_id=glass_id).is_empty()
    assert not lakehouse.read("tiles", slide_id="CMU-1-Small-Region").is_empty()


def _register(instance, resources, landing):
    added, _ = register_landing(instance, resources["lakehouse"], landing)
    return added


def test_same_bytes_under_two_names_are_registered_once(instance, resources, landing: Path):
    import shutil

    shutil.copyfile(landing / "CMU-1-Small-Region.svs", landing / "copy-of-cmu.svs")
    added, rejected = register_landing(instance, resources["lakehouse"], landing)
    assert "copy-of-cmu" not in added and "CMU-1-Small-Region" in added
    [duplicate] = rejected
    assert duplicate.slide_id == "copy-of-cmu"
    assert "duplicate of slide 'CMU-1-Small-Region'" in duplicate.reason
    assert "not processed twice" in duplicate.reason
    errors = resources["lakehouse"].read("slide_errors")
    assert errors.filter(slide_id="copy-of-cmu")["reason"][0] == duplicate.reason
    # Registered again later, it stays recorded and is not re-hashed into a partition.
    again, _ = register_landing(instance, resources["lakehouse"], landing)
    assert again == []


def test_a_duplicate_registered_by_hand_fails_at_slides_naming_the_original(
    instance, resources, landing: Path
):
    import shutil

    register_landing(instance, resources["lakehouse"], landing)
    assert materialize_slide("CMU-1-Small-Region", instance, resources, (slides,)).success
    shutil.copyfile(landing / "CMU-1-Small-Region.svs", landing / "late-copy.svs")
    instance.add_dynamic_partitions(SLIDES_PARTITION, ["late-copy"])
    result = materialize_slide("late-copy", instance, resources, (slides,))
    assert not result.success
    errors = resources["lakehouse"].read("slide_errors").filter(slide_id="late-copy")
    assert "duplicate of slide 'CMU-1-Small-Region'" in errors["reason"][0]
    assert resources["lakehouse"].read("slides", slide_id="late-copy").is_empty()
