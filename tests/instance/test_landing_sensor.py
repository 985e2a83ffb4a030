"""The landing sensor's auto-run mode: run requests per registered slide, capped per tick."""

from pathlib import Path

import dagster as dg
import pytest

from pathgen_dagster.lib.ingest.samples import SAMPLE_SLIDE_IDS
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.sensors import (
    AUTO_RUN_ENV,
    MAX_RUNS_PER_TICK_ENV,
    SELECTION_ENV,
    SENSOR_RUN_TAG,
    AutoRunSettings,
    RunCursor,
    landing_sensor,
    plan_runs,
    register_landing,
)

SAMPLE_IDS = list(SAMPLE_SLIDE_IDS)


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    from pathgen_dagster.definitions import defs

    return defs()


def tick(instance, resources, definitions, cursor=None) -> dg.SensorResult:
    """One sensor evaluation; applies its partition requests as the daemon would."""
    context = dg.build_sensor_context(
        instance=instance, resources=resources, definitions=definitions, cursor=cursor
    )
    result = landing_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result


def test_auto_run_is_off_by_default(instance, resources, definitions, monkeypatch):
    monkeypatch.delenv(AUTO_RUN_ENV, raising=False)
    result = tick(instance, resources, definitions)
    [request] = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == SAMPLE_IDS
    assert result.run_requests == []


def test_auto_run_requests_every_new_slide_capped_per_tick(instance, resources, definitions, monkeypatch):
    monkeypatch.setenv(AUTO_RUN_ENV, "1")
    monkeypatch.setenv(MAX_RUNS_PER_TICK_ENV, "3")
    first = tick(instance, resources, definitions)
    registered = list(instance.get_dynamic_partitions(SLIDES_PARTITION))
    assert sorted(registered) == SAMPLE_IDS
    assert [r.partition_key for r in first.run_requests] == registered[:3]
    partitioned = {
        key
        for key in definitions.resolve_all_asset_keys()
        if definitions.resolve_assets_def(key).partitions_def is not None
    }
    for request in first.run_requests:
        assert set(request.asset_selection) == partitioned
        assert {dg.AssetKey("slides"), dg.AssetKey("tiles")} <= set(request.asset_selection)
        assert request.tags[SENSOR_RUN_TAG] == "landing_sensor"
        assert request.run_key == f"slide-{request.partition_key}"

    second = tick(instance, resources, definitions, cursor=first.cursor)
    assert second.dynamic_partitions_requests == []
    assert [r.partition_key for r in second.run_requests] == registered[3:]

    third = tick(instance, resources, definitions, cursor=second.cursor)
    assert third.run_requests == [] and third.cursor == second.cursor
    assert isinstance(third.skip_reason, dg.SkipReason)


def test_slides_registered_and_materialized_before_auto_run_get_no_run(
    instance, resources, definitions, landing: Path, monkeypatch
):
    from assets.slides import slides

    register_landing(instance, resources["lakehouse"], landing)
    done = "CMU-1-Small-Region"
    assert dg.materialize([slides], partition_key=done, instance=instance, resources=resources).success
    monkeypatch.setenv(AUTO_RUN_ENV, "true")
    result = tick(instance, resources, definitions)
    requested = [r.partition_key for r in result.run_requests]
    assert sorted(requested) == [key for key in SAMPLE_IDS if key != done]


def test_selection_narrows_the_runs_and_a_bad_one_names_the_variable(
    instance, resources, definitions, monkeypatch
):
    monkeypatch.setenv(AUTO_RUN_ENV, "1")
    monkeypatch.setenv(SELECTION_ENV, "key:slides")
    result = tick(instance, resources, definitions)
    assert len(result.run_requests) == len(SAMPLE_IDS)
    assert {tuple(r.asset_selection) for r in result.run_requests} == {(dg.AssetKey("slides"),)}
    monkeypatch.setenv(SELECTION_ENV, "key:no_such_table")
    with pytest.raises(ValueError, match=SELECTION_ENV):
        tick(instance, resources, definitions, cursor=None)


def test_settings_from_env_reject_a_bad_cap():
    assert AutoRunSettings.from_env({}) == AutoRunSettings(enabled=False, max_runs_per_tick=20, selection="*")
    assert AutoRunSettings.from_env({AUTO_RUN_ENV: "on", MAX_RUNS_PER_TICK_ENV: "5"}).enabled
    with pytest.raises(ValueError, match=MAX_RUNS_PER_TICK_ENV):
        AutoRunSettings.from_env({MAX_RUNS_PER_TICK_ENV: "many"})
    with pytest.raises(ValueError, match="at least 1"):
        AutoRunSettings.from_env({MAX_RUNS_PER_TICK_ENV: "0"})


def test_plan_runs_resumes_after_deleted_partitions():
    keys = ["a", "b", "c", "d", "e"]
    chosen, cursor = plan_runs(keys, RunCursor(), set(), max_runs=2)
    assert chosen == ["a", "b"] and cursor == RunCursor(requested=2, last="b")
    # "a" deleted: the position is found again from the last key handled.
    chosen, cursor = plan_runs(["b", "c", "d", "e"], cursor, set(), max_runs=2)
    assert chosen == ["c", "d"] and cursor == RunCursor(requested=3, last="d")
    # Materialized slides are passed over without using up the cap.
    chosen, cursor = plan_runs(keys, RunCursor(), {"a", "b", "c"}, max_runs=1)
    assert chosen == ["d"] and cursor.last == "d"
    assert RunCursor.parse(cursor.serialize()) == cursor
