"""`pathgen run`'s isolation: each slide in its own process, a crash recorded as its failure."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from pathgen_dagster.cli import ensure_dagster_home
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.runner import run_slides


@pytest.fixture
def site(tmp_path: Path, sample_landing: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copyfile(sample_landing / "CMU-1-Small-Region.svs", landing / "good.svs")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("PATHGEN_LANDING", str(landing))
    monkeypatch.setenv("PATHGEN_LAKEHOUSE", str(tmp_path / "lakehouse"))
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(SLIDES_PARTITION, ["good", "gone"])
    return landing


def test_each_slide_runs_in_its_own_process_and_failures_stay_its_own(site: Path):
    with dg.DagsterInstance.get() as instance:
        outcomes = run_slides(instance, ["gone", "good"], selection="key:slides", isolate=True)
        runs = instance.get_runs()
    by_id = {o.slide_id: o for o in outcomes}
    assert not by_id["gone"].success and "no file in the landing zone" in by_id["gone"].error
    assert by_id["good"].success and by_id["good"].run_id
    # Both runs are recorded in the shared instance, so the UI shows them.
    assert {run.run_id for run in runs} >= {by_id["good"].run_id, by_id["gone"].run_id}


def test_a_slide_process_that_dies_is_that_slides_failure_and_the_next_one_runs(site: Path):
    """A 64 MiB address-space cap makes every child die before it can report (a real crash:
    Python cannot even import Dagster); each is recorded and the loop goes on."""
    seen = []
    with dg.DagsterInstance.get() as instance:
        outcomes = run_slides(
            instance,
            ["good", "gone"],
            selection="key:slides",
            isolate=True,
            memory_limit_mb=64,
            progress=seen.append,
        )
    assert [o.slide_id for o in outcomes] == ["good", "gone"] and len(seen) == 2
    for outcome in outcomes:
        assert not outcome.success
        assert "the slide's process exited with code" in outcome.error or "killed by" in outcome.error


def test_slides_run_at_once_in_their_own_processes(site: Path, sample_landing: Path):
    """``jobs=2``: two slides' processes overlap in time, and each keeps its own outcome.

    Each outcome's seconds span its child process's whole life, and one by one those spans
    are disjoint within the call, so the call lasting less than their sum shows overlap.
    (The runs' own start and end times cannot show it: a run lasts about a second, and on a
    loaded machine one child's imports can outlast the other's run.)
    """
    shutil.copyfile(sample_landing / "synthetic-generic-20x.tiff", site / "twin.tiff")
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(SLIDES_PARTITION, ["twin"])
        started = time.perf_counter()
        outcomes = run_slides(
            instance, ["good", "twin", "gone"], selection="key:slides", isolate=True, jobs=2
        )
        elapsed = time.perf_counter() - started
        runs = {run.run_id for run in instance.get_runs()}
    assert [o.slide_id for o in outcomes] == ["good", "twin", "gone"]
    assert [o.success for o in outcomes] == [True, True, False]
    assert {o.run_id for o in outcomes} <= runs
    assert elapsed < sum(o.seconds for o in outcomes), "ran one by one"


def test_slides_in_this_process_run_one_at_a_time(site: Path):
    with dg.DagsterInstance.get() as instance, pytest.raises(ValueError, match="one at a time"):
        run_slides(instance, ["good"], selection="key:slides", jobs=2)
