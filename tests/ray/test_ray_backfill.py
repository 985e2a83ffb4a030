"""Every sample slide backfilled on a local Ray cluster through deploy/ray/dagster.yaml.

The configuration users deploy, unchanged: dagster-ray's RayRunLauncher turns each slide's
run into a Ray job on a worker node; the instance (runs, events, pool slots) is PostgreSQL;
the lakehouse is on an S3 server (moto). A head and 2 worker nodes are separate raylets
with their own environments: the worker nodes hold the object-store and database secrets,
the jobs get only the non-secret places from the launcher. While the backfill runs, the
worker node executing the first slide to reach `patch_embeddings` is killed (every process
of that node, SIGKILL: a lost machine). Then:

- Ray reports the job FAILED, Dagster's run monitoring fails the run, run retries re-execute
  it from the failed steps on the surviving node, and the slide completes;
- every per-slide table holds exactly the rows a local `pathgen run` of the same slides
  wrote (same ids, same captions): nothing lost, nothing duplicated;
- the pools held across runs on different nodes, at the limits `deploy/set_pools.sh` set
  from this machine's profile: never more steps of a pool at once than its limit, while runs
  on the two nodes did.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pathgen_dagster.lib.ingest.samples import SAMPLE_SLIDE_IDS
from pathgen_dagster.profiles import machine_profile
from pathgen_dagster.resources.lakehouse import Lakehouse
from scripts.ray.local_cluster import LocalRayCluster, pids_with
from tests.ray.conftest import NODE_SECRETS
from tests.ui.dagster_site import (
    ROOT,
    TERMINAL_BACKFILL,
    VENV_BIN,
    DagsterDev,
    Site,
    StepSpan,
    backfill_outcome,
    blocked_messages,
    build_site,
    describe_pipeline,
    most_at_once,
    step_spans,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SAMPLE_IDS = list(SAMPLE_SLIDE_IDS)
LAKEHOUSE_ROOT = "s3://lake/ray"
KILL_AT_STEP = "patch_embeddings"  # tiles are written by then, captions are not
BACKFILL_TIMEOUT_S = 1800
REPLACEMENT = "worker-3"
# A Ray job's entrypoint: `dagster api execute_run '{... "pipeline_run_id": "<id>" ...}'`.
RUN_WORKER = re.compile(r"dagster api (?:execute_run|resume_run) .*?_run_id\": \"([0-9a-f-]{36})\"")
# Per-slide tables, the column that identifies a row, and the text compared with the local run.
COMPARED = {
    "slides": ("slide_id", "sha256"),
    "tiles": ("tile_id", "tissue_fraction"),
    "patches": ("patch_id", "image_sha256"),
    "descriptions": ("patch_id", "description"),
    "revised_descriptions": ("patch_id", "revised"),
    "captions": ("patch_id", "caption"),
    "caption_quality": ("patch_id", "passed"),
    "training_pairs": ("pair_id", "caption"),
}


def run_worker_nodes(cluster: LocalRayCluster) -> dict[str, str]:
    """run id -> the node whose processes execute it now (the job's `dagster api` entrypoint)."""
    nodes = {}
    for pid in pids_with({"PATHGEN_RAY_CLUSTER": cluster.token}):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        match = RUN_WORKER.search(cmdline)
        if match and (node := cluster.node_of(pid)):
            nodes[match.group(1)] = node
    return nodes


@dataclass(frozen=True)
class LocalRun:
    lakehouse: Lakehouse
    seconds: float


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, sample_landing: Path) -> LocalRun:
    """The baseline: the same slides through `pathgen run` on this machine, local lakehouse."""
    site = build_site(tmp_path_factory.mktemp("local") / "site", landing_from=sample_landing)
    started = time.perf_counter()
    site.run(VENV_BIN / "pathgen", "run", "--in-process", timeout=900)
    return LocalRun(Lakehouse(root=str(site.lakehouse)), time.perf_counter() - started)


@pytest.fixture(scope="module")
def ray_site(tmp_path_factory, sample_landing, s3_server, pg_env, ray_cluster) -> Site:
    """The launching machine: deploy/ray/dagster.yaml as its instance, the lakehouse on S3."""
    return build_site(
        tmp_path_factory.mktemp("ray") / "site",
        landing_from=sample_landing,
        dagster_yaml=ROOT / "deploy" / "ray" / "dagster.yaml",
        extra_env={**s3_server.env(LAKEHOUSE_ROOT), **pg_env, "PATHGEN_RAY_ADDRESS": ray_cluster.address},
    )


@pytest.fixture(scope="module")
def server(ray_site: Site):
    with DagsterDev(ray_site) as running:
        yield running


def s3_lakehouse(s3_server) -> Lakehouse:
    return Lakehouse(
        root=LAKEHOUSE_ROOT,
        s3_endpoint=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key_id,
        aws_secret_access_key=s3_server.secret_access_key,
        aws_region=s3_server.region,
        s3_allow_http=True,
    )


def rows(lakehouse: Lakehouse, table: str) -> pl.DataFrame:
    """The compared columns of ``table``, sorted."""
    columns = list(dict.fromkeys(["slide_id", *COMPARED[table]]))
    return lakehouse.read(table, columns=columns).sort(columns)


def test_backfill_on_ray_survives_a_lost_worker(
    local_run, server, ray_site, ray_cluster, s3_server, pg_env
):
    # Imported here: collecting this module in the main venv (no `ray` extra) must work.
    from ray.job_submission import JobStatus, JobSubmissionClient

    pipeline = describe_pipeline(server)
    client = JobSubmissionClient(ray_cluster.address)
    started = time.perf_counter()
    backfill_id = server.launch_backfill(
        pipeline.partitioned, SAMPLE_IDS, title="Ray backfill (tests/ray)"
    )

    seen_nodes: dict[str, str] = {}  # run id -> node that executed it
    killed: dict[str, str] = {}

    def backfill_runs(instance) -> list[dg.DagsterRun]:
        return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))

    with ray_site.instance() as instance:
        deadline = time.monotonic() + BACKFILL_TIMEOUT_S
        while server.backfill(backfill_id)["status"] not in TERMINAL_BACKFILL:
            if time.monotonic() > deadline:
                break  # the report below still says how far it got
            seen_nodes.update(run_worker_nodes(ray_cluster))
            if not killed:
                for run in backfill_runs(instance):
                    starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                    if any(entry.step_key == KILL_AT_STEP for entry in starts) and run.run_id in seen_nodes:
                        node = seen_nodes[run.run_id]
                        killed = {
                            "run_id": run.run_id,
                            "slide": run.tags["dagster/partition"],
                            "node": node,
                            "processes_killed": ray_cluster.kill_node(node),
                            "at_s": round(time.perf_counter() - started, 1),
                        }
                        # The cluster replaces the lost machine (as KubeRay or the autoscaler
                        # would), so the remaining runs do not all queue on one node.
                        ray_cluster.add_worker(REPLACEMENT)
                        break
            time.sleep(1)
        seconds = time.perf_counter() - started
        state = server.backfill(backfill_id)
        runs = backfill_runs(instance)
        outcome = backfill_outcome(instance, backfill_id, pipeline.names)
        spans = [s for s in step_spans(instance) if s.run_id in outcome.run_ids]
        run_spans = []
        for run in runs:
            record = instance.get_run_record_by_id(run.run_id)
            if record.start_time and record.end_time:
                run_spans.append(StepSpan(run.run_id, "run", record.start_time, record.end_time))
        killed_run = instance.get_run_by_id(killed["run_id"]) if killed else None
        killed_events = [e.message for e in instance.all_logs(killed["run_id"])] if killed else []
        retries = [r for r in runs if killed and r.tags.get("dagster/parent_run_id") == killed["run_id"]]
        used_pools = sorted({pipeline.pools[s.step_key] for s in spans if s.step_key in pipeline.pools})
        pools = {p: [s for s in spans if pipeline.pools.get(s.step_key) == p] for p in used_pools}
        limits = {pool: instance.event_log_storage.get_concurrency_info(pool).slot_count for pool in pools}
        blocked = {pool: len(blocked_messages(instance, pool)) for pool in pools}
        failed_runs = {  # why each failed run failed: its last three log messages
            run.run_id[:8]: [e.message for e in instance.all_logs(run.run_id)][-3:]
            for run in runs
            if run.status == dg.DagsterRunStatus.FAILURE
        }

    report = {
        "backfill_seconds": round(seconds, 1),
        "local_run_seconds": round(local_run.seconds, 1),
        "status": state["status"],
        "runs": {run.run_id[:8]: [run.tags["dagster/partition"], str(run.status.value),
                                  seen_nodes.get(run.run_id)] for run in runs},  # fmt: skip
        "killed": killed,
        "retries": [run.run_id[:8] for run in retries],
        "failed_runs": failed_runs,
        "runs_at_once": most_at_once(run_spans),
        "pools": {
            pool: {"limit": limits[pool], "steps": len(found), "most_at_once": most_at_once(found),
                   "times_blocked": blocked[pool]}
            for pool, found in pools.items()
        },  # fmt: skip
    }
    artifacts = ROOT / "artifacts" / "ray"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "ray-backfill.json").write_text(json.dumps(report, indent=2) + "\n")
    print("ray backfill:", json.dumps(report, indent=2))

    assert state["status"] in TERMINAL_BACKFILL, f"backfill {backfill_id} did not finish: {report}"
    # The runs were Ray jobs on the worker nodes, both first ones, never on the head.
    used = set(seen_nodes.values())
    assert set(ray_cluster.worker_names) <= used <= {*ray_cluster.worker_names, REPLACEMENT}, seen_nodes
    # The lost worker: Ray says the job failed, Dagster failed the run and retried it elsewhere.
    assert killed, f"no run reached {KILL_AT_STEP} while the backfill ran"
    assert killed["processes_killed"] > 0
    assert client.get_job_status(f"dagster-run-{killed['run_id']}") == JobStatus.FAILED
    assert killed_run.status == dg.DagsterRunStatus.FAILURE
    assert any("Ray job" in (message or "") for message in killed_events), killed_events[-5:]
    assert len(retries) == 1 and retries[0].status == dg.DagsterRunStatus.SUCCESS, report
    assert seen_nodes[retries[0].run_id] != killed["node"]
    # Every slide's run (or its retry) succeeded; every per-slide asset was materialized.
    assert state["status"] == "COMPLETED_SUCCESS", state
    assert not outcome.unexpected_failures(), outcome.unexpected_failures()
    for name in ("slides", "tiles", "captions", "training_pairs"):
        assert sorted(outcome.materialized[name]) == SAMPLE_IDS, name
    # Pools held across nodes at the profile's limits, while two runs ran at once: never more
    # steps of a pool at once than its limit. Whether a step had to wait for a slot depends
    # on timing, so it is reported (times_blocked), not required. The grounded agents take
    # the `cpu` pool (`llm` is for a model server's steps).
    assert report["runs_at_once"] == 2, report
    assert {"tile_readers", "cpu"} <= set(pools), report
    for pool, found in pools.items():
        assert limits[pool] == machine_profile().pool_limits()[pool], (pool, limits[pool])
        assert 1 <= most_at_once(found) <= limits[pool], (pool, found)
    # No secret travelled in a job's runtime environment or entrypoint (Ray shows both).
    secrets = [s3_server.secret_access_key, pg_env["PATHGEN_PG_PASSWORD"]]
    for job in client.list_jobs():
        shown = json.dumps(job.runtime_env or {}) + (job.entrypoint or "")
        assert not [s for s in secrets if s in shown], job.submission_id
        assert not set(NODE_SECRETS) & set((job.runtime_env or {}).get("env_vars", {}))

    # Same rows as the local run: ids and texts, per slide; none lost, none duplicated.
    remote = s3_lakehouse(s3_server)
    for table, (key, _) in COMPARED.items():
        expected, found = rows(local_run.lakehouse, table), rows(remote, table)
        assert found.height > 0, table
        ids = found.select(list(dict.fromkeys(["slide_id", key])))
        assert ids.is_duplicated().sum() == 0, f"{table}: duplicated rows"
        assert found.equals(expected), f"{table}: rows differ from the local run"


def test_cluster_stops_leaving_no_process(ray_cluster):
    assert ray_cluster.processes()
    ray_cluster.stop()
    assert ray_cluster.processes() == []
