"""A throwaway PathGen site (landing zone, lakehouse, instance) served by a real `dagster dev`.

Used by the browser, GraphQL, pool and 1,000-partition tests. Everything lives in one
temporary folder; `dagster dev` starts in that folder (not the repository) because Dagster
loads `.env` from the folder it starts in and lets it win over the environment: started
from the repository it would point every test at the repository's own lakehouse.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster_graphql import DagsterGraphQLClient

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation { repositories { name } }
        }
      }
    }
  }
}
"""

ASSET_NODES_QUERY = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    isPartitioned
    isMaterializable
    pools
    assetChecksOrError { ... on AssetChecks { checks { name } } }
  }
}
"""

LAUNCH_BACKFILL_MUTATION = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      timestamp
      endTimestamp
      partitionNames
      error { message }
    }
    ... on PythonError { message }
  }
}
"""

START_SENSOR_MUTATION = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Site:
    """One throwaway installation: landing zone, lakehouse and DAGSTER_HOME in ``root``."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def lakehouse(self) -> Path:
        return self.root / "lakehouse"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def env(self) -> dict[str, str]:
        """The environment every process of this site runs with."""
        env = dict(os.environ)
        env.update(
            {
                "DAGSTER_HOME": str(self.dagster_home),
                "PATHGEN_LANDING": str(self.landing),
                "PATHGEN_LAKEHOUSE": str(self.lakehouse),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                # The checked-out code wins over whatever the venv was installed from.
                "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            }
        )
        env.update(self.extra_env)
        return env

    def run(self, *command: str | Path, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
        """Run a command of the site (cwd = site root); its output, or an error with it."""
        completed = subprocess.run(
            [str(part) for part in command],
            cwd=self.root,
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, command))} exited {completed.returncode}:\n"
                f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
            )
        return completed.stdout

    def instance(self):
        """A DagsterInstance on this site's DAGSTER_HOME (close it, or use ``with``)."""
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.dagster_home))


def build_site(
    root: Path,
    *,
    landing_from: Path | None = None,
    dagster_yaml: Path = ROOT / "dagster.yaml",
    register: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> Site:
    """A fresh site: sample slides (`pathgen samples`), the shipped instance config with its
    pool limits (`deploy/set_pools.sh`), and the slides registered (`pathgen register`)."""
    site = Site(root=root, extra_env=dict(extra_env or {}))
    root.mkdir(parents=True, exist_ok=True)
    if landing_from is not None:
        shutil.copytree(landing_from, site.landing)
    else:
        site.run(VENV_BIN / "pathgen", "samples", site.landing)
    site.dagster_home.mkdir()
    shutil.copy(dagster_yaml, site.dagster_home / "dagster.yaml")
    site.run(ROOT / "deploy" / "set_pools.sh", env={"DAGSTER": str(VENV_BIN / "dagster")})
    if register:
        site.run(VENV_BIN / "pathgen", "register")
    return site


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def teardown_on_sigterm() -> None:
    """Make SIGTERM (a CI timeout, `timeout`, `kill`) unwind pytest like Ctrl-C does.

    By default SIGTERM kills pytest on the spot: no fixture teardown runs and every
    `dagster dev` it started lives on. As KeyboardInterrupt, fixtures stop their servers.
    """
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _own_session_with_default_sigint() -> None:
    """In the child before exec: a new process group, and SIGINT back to its default.

    `dagster dev` maps SIGTERM onto its SIGINT handler; a shell that starts jobs in the
    background sets SIGINT to "ignored", which children inherit, and then SIGTERM does
    nothing (FACTS.md). Restoring the default makes shutdown work however pytest was run.
    """
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DagsterDev:
    """`dagster dev -w workspace.yaml -h 127.0.0.1 -p PORT` for a site, as a context manager.

    Started with ``subprocess.Popen`` in its own session: SIGTERM to `dagster dev` shuts its
    webserver, daemon and code server down; whatever is left after that (a run worker still
    executing) is killed with its process group, so nothing outlives the test.
    """

    def __init__(self, site: Site, *, port: int | None = None, log_name: str = "dagster-dev.log"):
        self.site = site
        self.port = port or free_port()
        self.log_path = site.root / log_name
        self.process: subprocess.Popen | None = None
        self.started_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=120)

    def __enter__(self) -> DagsterDev:
        started = time.perf_counter()
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "dagster"),
                "dev",
                "-w",
                str(ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=self.site.root,
            env=self.site.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_own_session_with_default_sigint,
        )
        log.close()
        atexit.register(self.stop)  # also stops it if the test process exits early
        try:
            self._wait_until_loaded(timeout=240)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.perf_counter() - started
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_until_loaded(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5):
                    pass
                entries = self.client()._execute(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except Exception:
                time.sleep(1)
                continue
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                errors = [
                    entry["locationOrLoadError"].get("message")
                    for entry in entries
                    if entry["locationOrLoadError"]["__typename"] == "PythonError"
                ]
                if errors:
                    raise RuntimeError(f"code location failed to load: {errors}")
                return
            time.sleep(1)
        raise TimeoutError(f"dagster dev not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, *, grace_seconds: float = 60) -> None:
        """SIGTERM `dagster dev`, wait, then kill its whole process group."""
        if self.process is None:
            return
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    # --- GraphQL helpers -------------------------------------------------------------

    def asset_nodes(self) -> list[dict]:
        return self.client()._execute(ASSET_NODES_QUERY)["assetNodes"]

    def launch_backfill(
        self,
        asset_keys: Sequence[Sequence[str]],
        partition_names: Sequence[str],
        *,
        title: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch an asset backfill (``launchPartitionBackfill``); returns its id.

        The Python client has no method for asset backfills, so this sends the mutation the
        UI sends through the client's own transport (``DagsterGraphQLClient._execute``).
        """
        params = {
            "assetSelection": [{"path": list(key)} for key in asset_keys],
            "partitionNames": list(partition_names),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if title:
            params["title"] = title
        result = self.client()._execute(LAUNCH_BACKFILL_MUTATION, {"params": params})[
            "launchPartitionBackfill"
        ]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill not launched: {json.dumps(result)[:2000]}")
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        result = self.client()._execute(BACKFILL_QUERY, {"id": backfill_id})
        return result["partitionBackfillOrError"]

    def wait_for_backfill(self, backfill_id: str, *, timeout: float) -> dict:
        """Poll the backfill until it reaches a terminal status; its last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.backfill(backfill_id)
            if state.get("status") in TERMINAL_BACKFILL:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} still {state.get('status')}")
            time.sleep(2)

    def location_name(self) -> str:
        """The code location's name (one location in workspace.yaml)."""
        entries = self.client()._execute(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
        [entry] = entries
        return entry["name"]

    def start_sensor(self, name: str, *, location: str | None = None, repository: str = "__repository__"):
        """Turn a sensor on (``startSensor``); the daemon ticks it at once, then every interval."""
        location = location or self.location_name()
        selector = {
            "repositoryLocationName": location,
            "repositoryName": repository,
            "sensorName": name,
        }
        result = self.client()._execute(START_SENSOR_MUTATION, {"selector": selector})
        return result["startSensor"]


# --- What the instance recorded ----------------------------------------------------------


@dataclass(frozen=True)
class StepSpan:
    """When one step of one run executed (STEP_START to its success or failure)."""

    run_id: str
    step_key: str
    start: float
    end: float


def step_spans(instance, step_keys: set[str] | None = None) -> list[StepSpan]:
    """Execution spans of the given steps (default: all) across every run in the instance."""
    from dagster import DagsterEventType

    spans = []
    for record in instance.get_run_records():
        starts: dict[str, float] = {}
        for entry in instance.all_logs(
            record.dagster_run.run_id,
            of_type={
                DagsterEventType.STEP_START,
                DagsterEventType.STEP_SUCCESS,
                DagsterEventType.STEP_FAILURE,
            },
        ):
            if step_keys is not None and entry.step_key not in step_keys:
                continue
            if entry.dagster_event_type == DagsterEventType.STEP_START:
                starts[entry.step_key] = entry.timestamp
            elif entry.step_key in starts:
                spans.append(
                    StepSpan(
                        record.dagster_run.run_id,
                        entry.step_key,
                        starts.pop(entry.step_key),
                        entry.timestamp,
                    )
                )
    return spans


def most_at_once(spans: Sequence[StepSpan]) -> int:
    """The largest number of spans in progress at the same instant."""
    events = sorted(
        [(span.start, 1) for span in spans] + [(span.end, -1) for span in spans],
        key=lambda event: (event[0], event[1]),  # an end at t frees before a start at t
    )
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def blocked_messages(instance, pool: str) -> list[str]:
    """Dagster's "Step blocked by limit for pool X" engine events, across all runs."""
    from dagster import DagsterEventType

    messages = []
    for record in instance.get_run_records():
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            if entry.message and entry.message.endswith(f"limit for pool {pool}"):
                messages.append(f"{record.dagster_run.run_id[:8]} {entry.step_key}: {entry.message}")
    return messages


# --- The pipeline as the running code location reports it ------------------------------

FINAL_STAGES = ("captions", "tiles")  # the first that exists is the stage checked in detail


@dataclass(frozen=True)
class Pipeline:
    """The code location's assets: what a whole-pipeline backfill selects, and its checks."""

    materializable: list[tuple[str, ...]]
    partitioned: list[tuple[str, ...]]
    final: str
    checks: list[str]
    pools: dict[str, str]  # step key -> pool

    @property
    def names(self) -> list[str]:
        return ["/".join(key) for key in self.materializable]


def describe_pipeline(server: DagsterDev) -> Pipeline:
    nodes = [n for n in server.asset_nodes() if n["isMaterializable"]]
    materializable = sorted(tuple(n["assetKey"]["path"]) for n in nodes)
    partitioned = sorted(tuple(n["assetKey"]["path"]) for n in nodes if n["isPartitioned"])
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    final = next(stage for stage in FINAL_STAGES if stage in by_name)
    checks = sorted(c["name"] for c in (by_name[final]["assetChecksOrError"] or {}).get("checks", []))
    pools = {"__".join(n["assetKey"]["path"]): pool for n in nodes for pool in n["pools"]}
    return Pipeline(materializable, partitioned, final, checks, pools)


@dataclass(frozen=True)
class BackfillOutcome:
    """What a backfill's runs did, read from the instance's event log."""

    run_ids: list[str]
    materialized: dict[str, set[str]]  # asset name -> slide ids materialized by the backfill
    step_failures: list[str]  # "run step: ErrorClass: message" for every failed step

    def unexpected_failures(self) -> list[str]:
        """Failures other than a blocking asset check's verdict (which is data, not a bug)."""
        return [f for f in self.step_failures if "DagsterAssetCheckFailedError" not in f]


def backfill_outcome(instance, backfill_id: str, asset_names: Sequence[str]) -> BackfillOutcome:
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    run_ids = [run.run_id for run in runs]
    materialized: dict[str, set[str]] = {name: set() for name in asset_names}
    failures: list[str] = []
    for run_id in run_ids:
        for entry in instance.all_logs(
            run_id,
            of_type={
                dg.DagsterEventType.ASSET_MATERIALIZATION,
                dg.DagsterEventType.STEP_FAILURE,
            },
        ):
            event = entry.dagster_event
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                name = event.asset_key.to_user_string()
                if name in materialized:
                    materialized[name].add(event.partition or "")
            else:
                error = event.step_failure_data.error
                text = f"{error.cls_name}: {error.message.strip()[:300]}" if error else "?"
                failures.append(f"{run_id[:8]} {entry.step_key}: {text}")
    return BackfillOutcome(run_ids, materialized, failures)


def check_verdicts(instance, check_key, run_ids: Sequence[str] | None = None) -> dict[str, str]:
    """The latest completed result of a check per slide: SUCCEEDED or FAILED."""
    verdicts: dict[str, str] = {}
    wanted = set(run_ids) if run_ids is not None else None
    records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1000)
    for record in records:  # newest first
        if record.status.value not in ("SUCCEEDED", "FAILED"):
            continue
        if wanted is not None and record.run_id not in wanted:
            continue
        slide_id = record.partition
        if slide_id is None:  # an unpartitioned check runs inside one slide's run
            run = instance.get_run_by_id(record.run_id)
            slide_id = run.tags.get("dagster/partition") if run else None
        if slide_id is not None:
            verdicts.setdefault(slide_id, record.status.value)
    return verdicts


SENSOR_TICKS_QUERY = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 10) { status skipReason timestamp } } }
    ... on PythonError { message }
  }
}
"""


def latest_ticks(server: DagsterDev, sensor: str, *, repository: str = "__repository__") -> list[dict]:
    """The sensor's newest ticks (status, skipReason, timestamp), newest first."""
    selector = {
        "repositoryLocationName": server.location_name(),
        "repositoryName": repository,
        "sensorName": sensor,
    }
    result = server.client()._execute(SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
    if result["__typename"] != "Sensor":
        raise RuntimeError(f"sensor {sensor}: {result}")
    return result["sensorState"]["ticks"]


def wait_for_runs(site: Site, tags: Mapping[str, str], *, timeout: float) -> list:
    """Runs with ``tags`` once at least one exists and all have finished (newest first)."""
    import dagster as dg

    deadline = time.monotonic() + timeout
    while True:
        with site.instance() as instance:
            runs = instance.get_runs(filters=dg.RunsFilter(tags=dict(tags)))
        if runs and all(run.is_finished for run in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished run tagged {tags} after {timeout}s: {runs}")
        time.sleep(3)
