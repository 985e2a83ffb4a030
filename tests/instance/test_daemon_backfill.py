"""The shipped instance configuration under a real daemon: sensor, run queue, pools, GraphQL.

One `dagster dev` (webserver + daemon + code server) serves a fresh site whose dagster.yaml
is the project's and whose pool limits come from deploy/set_pools.sh. Nothing is mocked:

1. The landing sensor, turned on through GraphQL with auto-run enabled in the code
   location's environment, registers the landed sample slides and requests their runs;
   the run queue never has more than `max_concurrent_runs` of them in progress.
2. The whole pipeline is backfilled over every slide through the GraphQL API with
   scripts/ui/backfill.py (Dagster's Python client, the mutation the UI sends). The
   `tile_readers` pool is first paused (limit 0, as an operator would), so every run in
   progress provably waits at `tiles`; the shipped limits are then restored, and polling
   the instance shows no pool ever holding more slots than its limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import dagster as dg
import pytest

from pathgen_dagster import run_health
from pathgen_dagster.definitions import MAX_CONCURRENT_STEPS
from pathgen_dagster.lib.ingest.samples import SAMPLE_SLIDE_IDS
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.sensors import (
    AUTO_RUN_ENV,
    MAX_RUNS_PER_TICK_ENV,
    SELECTION_ENV,
    SENSOR_RUN_TAG,
)
from tests.ui.dagster_site import (
    ROOT,
    TERMINAL_BACKFILL,
    VENV_BIN,
    DagsterDev,
    StepSpan,
    backfill_outcome,
    blocked_messages,
    build_site,
    describe_pipeline,
    most_at_once,
    step_spans,
)

pytestmark = [pytest.mark.daemon, pytest.mark.slow]

SAMPLE_IDS = list(SAMPLE_SLIDE_IDS)
BACKFILL_TIMEOUT_S = 900
IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_landing: Path):
    return build_site(
        tmp_path_factory.mktemp("daemon") / "site",
        landing_from=sample_landing,
        register=False,  # the sensor registers them
        extra_env={
            AUTO_RUN_ENV: "1",
            SELECTION_ENV: "key:slides",
            MAX_RUNS_PER_TICK_ENV: str(len(SAMPLE_IDS)),
        },
    )


@pytest.fixture(scope="module")
def server(site):
    with DagsterDev(site) as running:
        yield running


@pytest.fixture(scope="module")
def max_concurrent_runs(site) -> int:
    with site.instance() as instance:
        return instance.get_concurrency_config().run_queue_config.max_concurrent_runs


def wait_for(predicate, *, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}")


def run_spans(instance, run_ids) -> list[StepSpan]:
    spans = []
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        if record.start_time and record.end_time:
            spans.append(StepSpan(run_id, "run", record.start_time, record.end_time))
    return spans


def test_sensor_registers_landed_slides_and_requests_their_runs(server, site, max_concurrent_runs):
    started = server.start_sensor("landing_sensor")
    assert started["__typename"] == "Sensor", started
    assert started["sensorState"]["status"] == "RUNNING"

    def finished_sensor_runs():
        with site.instance() as instance:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={SENSOR_RUN_TAG: "landing_sensor"}))
            done = [run for run in runs if run.is_finished]
            return runs if len(done) == len(SAMPLE_IDS) else None

    runs = wait_for(finished_sensor_runs, timeout=480, what="the sensor's runs to finish")
    with site.instance() as instance:
        assert sorted(instance.get_dynamic_partitions(SLIDES_PARTITION)) == SAMPLE_IDS
        assert sorted(run.tags["dagster/partition"] for run in runs) == SAMPLE_IDS
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert {frozenset(run.asset_selection) for run in runs} == {frozenset({dg.AssetKey("slides")})}
        at_once = most_at_once(run_spans(instance, [run.run_id for run in runs]))
    assert 1 <= at_once <= max_concurrent_runs
    registry = Lakehouse(root=str(site.lakehouse)).read("slides")
    assert sorted(registry["slide_id"].to_list()) == SAMPLE_IDS


def test_graphql_backfill_holds_every_pool_to_its_limit(server, site, max_concurrent_runs, artifacts_dir):
    pipeline = describe_pipeline(server)
    assert pipeline.pools.get("tiles") == "tile_readers"
    pools = sorted(set(pipeline.pools.values()))
    dagster = VENV_BIN / "dagster"
    site.run(dagster, "instance", "concurrency", "set", "tile_readers", "0")  # pause the pool

    started = time.perf_counter()
    # The command a user runs (scripts/ui/backfill.py: Dagster's GraphQL client, the UI's
    # mutation), for every asset and every registered slide.
    printed = site.run(
        VENV_BIN / "python",
        ROOT / "scripts" / "ui" / "backfill.py",
        "--url",
        server.url,
        "--title",
        "GraphQL backfill (tests/instance)",
    )
    backfill_id = re.match(r"backfill (\w+): (\d+) assets x (\d+) slides", printed).group(1)
    assert f"{len(pipeline.materializable)} assets x {len(SAMPLE_IDS)} slides" in printed

    def all_runs_waiting_at_tiles():
        with site.instance() as instance:
            info = instance.event_log_storage.get_concurrency_info("tile_readers")
            queued = instance.get_runs(
                filters=dg.RunsFilter(
                    tags={"dagster/backfill": backfill_id},
                    statuses=[dg.DagsterRunStatus.QUEUED],
                )
            )
            running = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}, statuses=IN_PROGRESS)
            )
            if info.pending_step_count == max_concurrent_runs and queued:
                return info, running, queued
            return None

    info, running, queued = wait_for(
        all_runs_waiting_at_tiles, timeout=300, what="every run in progress to wait at tiles"
    )
    # The run queue let exactly max_concurrent_runs start; the pool let none of them tile.
    assert len(running) == max_concurrent_runs and info.active_slot_count == 0
    assert len(queued) == len(SAMPLE_IDS) - max_concurrent_runs

    site.run(ROOT / "deploy" / "set_pools.sh", env={"DAGSTER": str(dagster)})  # resume
    most_claimed = dict.fromkeys(pools, 0)
    with site.instance() as instance:
        limits = {pool: instance.event_log_storage.get_concurrency_info(pool).slot_count for pool in pools}
        assert limits["tile_readers"] == 2 and limits.get("llm", 1) == 1
        deadline = time.monotonic() + BACKFILL_TIMEOUT_S
        while server.backfill(backfill_id)["status"] not in TERMINAL_BACKFILL:
            assert time.monotonic() < deadline, f"backfill {backfill_id} did not finish"
            for pool in pools:
                claimed = instance.event_log_storage.get_concurrency_info(pool).active_slot_count
                assert claimed <= limits[pool], (pool, claimed, limits[pool])
                most_claimed[pool] = max(most_claimed[pool], claimed)
            time.sleep(0.5)
        state = server.backfill(backfill_id)
        seconds = time.perf_counter() - started
        outcome = backfill_outcome(instance, backfill_id, pipeline.names)
        report = {"graphql_backfill_seconds": round(seconds, 1), "status": state["status"]}
        steps_at_once = {}
        for pool in pools:
            steps = {step for step, p in pipeline.pools.items() if p == pool}
            spans = [s for s in step_spans(instance, steps) if s.run_id in outcome.run_ids]
            at_once = steps_at_once[pool] = most_at_once(spans)
            report[f"pool_{pool}"] = {
                "limit": limits[pool],
                "most_slots_claimed_seen": most_claimed[pool],
                "most_steps_at_once": at_once,
                "steps": len(spans),
                "times_blocked": len(blocked_messages(instance, pool)),
            }
            assert spans and at_once <= limits[pool], (pool, at_once, limits[pool])
        assert len(blocked_messages(instance, "tile_readers")) >= max_concurrent_runs
        # The executor cap: inside one run, never more than MAX_CONCURRENT_STEPS at once.
        all_steps = step_spans(instance)
        per_run = {
            run_id: most_at_once([s for s in all_steps if s.run_id == run_id]) for run_id in outcome.run_ids
        }
        report["most_steps_at_once_in_one_run"] = max(per_run.values())
        assert max(per_run.values()) <= MAX_CONCURRENT_STEPS, per_run
    (artifacts_dir / "daemon-backfill.json").write_text(json.dumps(report, indent=2) + "\n")

    assert state["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED"), state
    assert not outcome.unexpected_failures(), outcome.unexpected_failures()
    # The limit was reached: seen either in the steps' own start/end events or in the slot
    # claims the poll saw (a tiles step holds its slot for about a second: its events can
    # miss an overlap the claims show, and the 0.5 s poll can miss one the events show) ...
    reached = max(steps_at_once["tile_readers"], most_claimed["tile_readers"])
    assert reached == limits["tile_readers"], (steps_at_once, most_claimed)
    for stage in ("slides", "tiles", pipeline.final):  # ... and every slide got through
        assert sorted(outcome.materialized[stage]) == SAMPLE_IDS, stage
    rows = Lakehouse(root=str(site.lakehouse)).read(pipeline.final)
    assert sorted(set(rows["slide_id"].to_list())) == SAMPLE_IDS



def _state(pid: int) -> str | None:
    """A process's state letter from /proc (None when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _run_worker_pid(instance, run_id: str) -> int | None:
    """The run worker's pid, as its multiprocess executor logged it ("parent process (pid: N)")."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = re.search(r"multiprocess executor: parent process \(pid: (\d+)\)", event.message or "")
        if found:
            return int(found.group(1))
    return None


def test_a_killed_run_worker_takes_its_steps_with_it_and_the_daemon_retries_the_run(server, site):
    """Issue 16: SIGKILL the run worker of a daemon-launched run while a step executes. Its
    forkserver and step die with it (nothing commits after it died), run monitoring fails the
    run, run_retries re-executes it, and the slide's rows are what they were before."""
    slide, keys = "synthetic-aperio-40x", ["tiles", "patch_embeddings"]
    lakehouse = Lakehouse(root=str(site.lakehouse))
    before = {key: lakehouse.read(key, slide_id=slide) for key in keys}
    run_id = server.client().submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=server.location_name(),
        asset_selection=[[key] for key in keys],
        tags={"dagster/partition": slide},
    )

    def step_started():
        with site.instance() as instance:
            starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
            return any(event.step_key == "patch_embeddings" for event in starts)

    wait_for(step_started, timeout=300, what="patch_embeddings to start", interval=0.2)
    with site.instance() as instance:
        worker = _run_worker_pid(instance, run_id)
    assert worker is not None, "no run worker process found for the run"
    below = _descendants(worker)
    assert below, "the run worker had no forkserver or step process"
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    wait_for(
        lambda: all(_state(pid) in (None, "Z", "X") for pid in below),
        timeout=30,
        what=f"the killed run worker's processes {sorted(below)} to die",
        interval=0.2,
    )

    def finished(run_filter):
        def find():
            with site.instance() as instance:
                return next((run for run in instance.get_runs(filters=run_filter) if run.is_finished), None)

        return find

    killed = wait_for(finished(dg.RunsFilter(run_ids=[run_id])), timeout=240, what="the killed run to fail")
    assert killed.status == dg.DagsterRunStatus.FAILURE, killed.status
    retry = wait_for(
        finished(dg.RunsFilter(tags={"dagster/parent_run_id": run_id})),
        timeout=600,
        what="the daemon's retry of the killed run",
    )
    assert retry.status == dg.DagsterRunStatus.SUCCESS, retry.status
    with site.instance() as instance:
        materialized = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert not [event for event in materialized if event.timestamp > killed_at], (
            "a step of the killed run committed after its run worker died"
        )
        assert slide not in {need.slide_id for need in run_health.slides_needing_rerun(instance)}
    for key in keys:  # the same rows, none lost or doubled; only the run's provenance differs
        after = lakehouse.read(key, slide_id=slide)
        same = [column for column in after.columns if column not in ("run_id", "upstream_version")]
        assert after.select(same).sort("tile_id").equals(before[key].select(same).sort("tile_id")), key
