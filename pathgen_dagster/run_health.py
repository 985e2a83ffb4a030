"""Runs whose process died: found, failed, their pool slots freed, their slides reported.

A run executed in process by ``pathgen run`` has no run launcher, so Dagster's run
monitoring can never tell that its process is gone: killed with SIGKILL, it stays STARTED
for good and keeps the pool slots it claimed (one dead run in a model stage blocks the
one-slot ``llm`` pool for every later slide). Each such run carries the identity of the
process that executes it (:data:`PROCESS_TAG`: host, boot id, pid and the pid's start
time, so a reused pid is not taken for the run's process). This module decides from it
whether the run is alive, and fails the dead ones with the reason, freeing their slots:

- ``pathgen run`` sweeps before its first slide, and while a step waits for a slot it
  says for which pool and behind which runs, clearing a holder that turns out dead;
- ``pathgen runs`` lists runs in progress with their process state and the slides whose
  last run died and was not retried; ``pathgen runs --clear-dead`` clears them;
- :data:`run_health_sensor` sweeps every 30 s while the daemon is up (``make ui``).

Runs launched by the daemon are checked by Dagster itself (the code server reports a run
worker that exited); slots they still hold are freed here once the run is finished.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason

PROCESS_TAG = "pathgen/process"
"""``<host>/<boot id>/<pid>/<start ticks>`` of the process that executes the run."""

IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
PARTITION_TAG = "dagster/partition"
BACKFILL_TAG = "dagster/backfill"
PARENT_RUN_TAG = "dagster/parent_run_id"
SWEEP_INTERVAL_S = 30
ProcessState = Literal["alive", "dead", "elsewhere"]


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _start_ticks(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot, or None when no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its parent has not reaped it
        return None
    return fields[19]


def process_identity(pid: int | None = None) -> str:
    """The :data:`PROCESS_TAG` value naming process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    ticks = _start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError(f"no process {pid}")
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{ticks}"


def process_state(identity: str) -> ProcessState:
    """Whether the process named by ``identity`` still runs (``elsewhere``: another host)."""
    host, boot, pid, ticks = identity.rsplit("/", 3)
    if host != socket.gethostname():
        return "elsewhere"
    if boot != _boot_id():  # the machine restarted since: every process of then is gone
        return "dead"
    return "alive" if _start_ticks(int(pid)) == ticks else "dead"


def run_tags() -> dict[str, str]:
    """Tags a run executed in this process carries, so a sweep can tell when it died."""
    return {PROCESS_TAG: process_identity()}


@dataclass(frozen=True)
class RunHealth:
    """One run in progress and what is known of its process."""

    run_id: str
    slide_id: str | None
    status: str
    state: ProcessState | Literal["daemon"]
    pid: int | None
    started: datetime | None
    slots: tuple[str, ...]  # "pool:step" the run holds

    def describe(self) -> str:
        slide = self.slide_id or "-"
        since = self.started.strftime("%H:%M:%S") if self.started else "?"
        who = f"pid {self.pid} {self.state}" if self.pid else self.state
        held = ", ".join(self.slots) or "no slot"
        return f"run {self.run_id[:8]} (slide {slide}, {self.status} since {since}, {who}; holds {held})"


def _slots_by_run(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    storage = instance.event_log_storage
    held: dict[str, list[str]] = {}
    for pool in sorted(storage.get_concurrency_keys()):
        for slot in storage.get_concurrency_info(pool).claimed_slots:
            held.setdefault(slot.run_id, []).append(f"{pool}:{slot.step_key}")
    return held


def _health(record, held: dict[str, list[str]]) -> RunHealth:
    run = record.dagster_run
    identity = run.tags.get(PROCESS_TAG)
    state: ProcessState | Literal["daemon"] = "daemon" if identity is None else process_state(identity)
    started = record.start_time or record.create_timestamp.timestamp()
    return RunHealth(
        run_id=run.run_id,
        slide_id=run.tags.get(PARTITION_TAG),
        status=run.status.value,
        state=state,
        pid=int(identity.rsplit("/", 3)[2]) if identity else None,
        started=datetime.fromtimestamp(started, UTC) if started else None,
        slots=tuple(held.get(run.run_id, ())),
    )


def runs_in_progress(instance: dg.DagsterInstance) -> list[RunHealth]:
    """Every run the instance holds as in progress, with its process state and slots."""
    held = _slots_by_run(instance)
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS))
    return [_health(record, held) for record in records]


@dataclass(frozen=True)
class Cleared:
    """What one sweep did."""

    failed: tuple[RunHealth, ...]  # dead runs marked FAILED (their slots freed)
    freed: tuple[str, ...]  # "run:pool:step" slots of finished runs freed

    def lines(self) -> list[str]:
        out = [f"cleared dead {health.describe()}: marked FAILED, slots freed" for health in self.failed]
        out += [f"freed slot {slot} of a finished run" for slot in self.freed]
        return out


def fail_dead_run(instance: dg.DagsterInstance, health: RunHealth) -> None:
    """Marks a run whose process is gone FAILED (unexpected termination) and frees its slots."""
    run = instance.get_run_by_id(health.run_id)
    if run is None or run.status not in IN_PROGRESS:
        instance.event_log_storage.free_concurrency_slots_for_run(health.run_id)
        return
    message = (
        f"pathgen: the process of this run (pid {health.pid} on {socket.gethostname()}) is gone"
        f" (killed or crashed) while the run was {health.status}; marked FAILED and its pool"
        f" slots freed ({', '.join(health.slots) or 'none held'}). Re-run the slide:"
        f" pathgen run --slide {health.slide_id or '<slide>'}"
    )
    instance.report_run_failed(
        run,
        message,
        JobFailureData(
            error=None,
            failure_reason=RunFailureReason.UNEXPECTED_TERMINATION,
            first_step_failure_event=None,
        ),
    )
    instance.event_log_storage.free_concurrency_slots_for_run(health.run_id)


def clear_dead_runs(instance: dg.DagsterInstance, *, dry_run: bool = False) -> Cleared:
    """Fails every run in progress whose process is gone and frees slots of finished runs."""
    dead = tuple(h for h in runs_in_progress(instance) if h.state == "dead")
    freed = []
    for run_id, slots in _slots_by_run(instance).items():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            freed += [f"{run_id[:8]}:{slot}" for slot in slots]
            if not dry_run:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    if not dry_run:
        for health in dead:
            fail_dead_run(instance, health)
    return Cleared(dead, tuple(freed))


@dataclass(frozen=True)
class NeedsRerun:
    """A slide whose latest run died and was not retried (a backfill in a terminal state)."""

    slide_id: str
    run_id: str
    backfill_id: str | None
    selection: tuple[str, ...]

    def command(self) -> str:
        select = " or ".join(f'key:"{key}"' for key in self.selection) or "*"
        return f"pathgen run --slide {self.slide_id} --select '{select}'"


def slides_needing_rerun(instance: dg.DagsterInstance, *, limit: int = 1000) -> list[NeedsRerun]:
    """Slides whose most recent run failed because its process died and nothing re-ran it
    (a retry of it carries ``dagster/parent_run_id``)."""
    records = instance.get_run_records(limit=limit, order_by="create_timestamp", ascending=False)
    latest: dict[tuple[str, frozenset], dg.DagsterRun] = {}
    retried = {r.dagster_run.tags.get(PARENT_RUN_TAG) for r in records} - {None}
    for record in records:
        run = record.dagster_run
        slide = run.tags.get(PARTITION_TAG)
        if slide is None:
            continue
        key = (slide, frozenset(run.asset_selection or ()))
        latest.setdefault(key, run)  # newest first
    out = []
    for (slide, selection), run in sorted(latest.items(), key=lambda kv: kv[0][0]):
        # Dagster tags a run it means to retry (a dead worker, not a raising step) will_retry;
        # a backfill that had already finished then skips the retry ("terminal state").
        died = run.tags.get("dagster/failure_reason") in (
            "UNEXPECTED_TERMINATION",
            "RUN_WORKER_RESTART",
        ) or run.tags.get("dagster/will_retry") == "true"
        if run.status == dg.DagsterRunStatus.FAILURE and died and run.run_id not in retried:
            keys = tuple(sorted(key.to_user_string() for key in selection))
            out.append(NeedsRerun(slide, run.run_id, run.tags.get(BACKFILL_TAG), keys))
    return out


@contextmanager
def polling(name: str, poll_s: float, tick: Callable[[bool], bool]) -> Iterator[None]:
    """While the block runs: ``tick(False)`` every ``poll_s`` seconds in a daemon thread, and
    ``tick(True)`` once the block is over (one last read); a tick that returns False ends the
    polling. The block's end waits at most ``poll_s + 5`` s for the thread."""
    stop = threading.Event()

    def loop() -> None:
        finished = False
        while not finished:
            finished = stop.wait(poll_s)
            if not tick(finished):
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=poll_s + 5)


def watch_run(
    instance: dg.DagsterInstance,
    run_id: str,
    progress: Callable[[str], None],
    *,
    poll_s: float = 2.0,
) -> AbstractContextManager[None]:
    """While the block runs ``run_id``: say when a step waits for a pool slot, and behind
    which runs; a holder whose process is gone is failed and its slots freed."""
    said: set[tuple[str, str, tuple[str, ...]]] = set()

    def tick(finished: bool) -> bool:
        if finished:
            return False
        try:
            for line in _waiting_lines(instance, run_id, said):
                progress(line)
        except Exception as error:  # watching must never break the run it watches
            progress(f"run health: could not read the pools ({type(error).__name__}: {error})")
            return False
        return True

    return polling("pathgen-run-health", poll_s, tick)


def _waiting_lines(instance, run_id: str, said: set) -> list[str]:
    storage = instance.event_log_storage
    lines = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        waiting = [p for p in info.pending_steps if p.run_id == run_id and p.assigned_timestamp is None]
        if not waiting:
            continue
        holders = sorted({slot.run_id for slot in info.claimed_slots if slot.run_id != run_id})
        held = _slots_by_run(instance)
        healths = []
        for holder in holders:
            record = instance.get_run_record_by_id(holder)
            if record is None:
                continue
            health = _health(record, held)
            if health.state == "dead" or record.dagster_run.is_finished:
                fail_dead_run(instance, health)
                lines.append(f"cleared dead {health.describe()}: marked FAILED, slots freed")
                continue
            healths.append(health)
        for step in waiting:
            key = (pool, step.step_key, tuple(h.run_id for h in healths))
            if key in said:
                continue
            said.add(key)
            behind = "; ".join(h.describe() for h in healths) or (
                f"no run: the pool's limit is {info.slot_count}"
                f" (`dagster instance concurrency set {pool} N` changes it)"
            )
            lines.append(
                f"waiting: step {step.step_key} needs a slot of pool `{pool}`"
                f" ({len(info.claimed_slots)} of {info.slot_count} taken) behind {behind}"
            )
    return lines


@dg.sensor(
    name="run_health_sensor",
    minimum_interval_seconds=SWEEP_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs whose process died (pathgen run killed) and frees their pool slots.",
)
def run_health_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    cleared = clear_dead_runs(context.instance)
    for line in cleared.lines():
        context.log.warning(line)
    return dg.SkipReason("; ".join(cleared.lines()) or "no dead run")


def format_report(
    running: Sequence[RunHealth], reruns: Sequence[NeedsRerun], cleared: Cleared | None
) -> list[str]:
    """The lines ``pathgen runs`` prints."""
    lines = [f"{len(running)} runs in progress"]
    lines += [f"  {h.describe()}" for h in running]
    if cleared is not None:
        lines += [f"  {line}" for line in cleared.lines()] or ["  nothing to clear"]
    else:
        dead = [h for h in running if h.state == "dead"]
        if dead:
            lines.append(f"  {len(dead)} dead: clear them with `pathgen runs --clear-dead`")
    lines.append(f"{len(reruns)} slides whose last run died and was not retried")
    for item in reruns:
        origin = f" (backfill {item.backfill_id})" if item.backfill_id else ""
        lines.append(f"  {item.slide_id}: run {item.run_id[:8]}{origin} -> {item.command()}")
    return lines
