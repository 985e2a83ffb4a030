"""A `pathgen run` killed with SIGKILL must not block later runs (issue 16, high).

Real processes on a real instance (the shipped dagster.yaml and pool limits, SQLite under
a throwaway DAGSTER_HOME): `pathgen run` commands are started, frozen with SIGSTOP (alive,
holding a pool slot) and killed with SIGKILL at the moment they hold the `tile_readers`
slot. Before the fix the killed run stayed STARTED holding its slot and the next run
waited for ever, printing nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from pathgen_dagster import run_health
from tests.ui.dagster_site import VENV_BIN, Site, build_site

pytestmark = pytest.mark.slow

SLIDES = ["synthetic-aperio-20x", "synthetic-generic-20x", "CMU-1-Small-Region"]


class Command:
    """One `pathgen ...` process of the site, its output collected line by line."""

    def __init__(self, site: Site, *args: str):
        self.process = subprocess.Popen(
            [str(VENV_BIN / "pathgen"), *args],
            cwd=site.root,
            env={**site.env(), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the slide's child process too
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to `pathgen run` and the slide process it started."""
        os.killpg(self.process.pid, signum)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def wait_for(predicate, *, timeout: float, what: str, poll: float = 0.05, show=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}\n{show()}")


def slot_holders(site: Site, pool: str) -> list[str]:
    """Runs holding a slot of ``pool``, read straight from the instance's SQLite index: a
    tiles step holds its slot for about a second, and opening a DagsterInstance per poll
    (about 1 s here) missed it."""
    index = site.dagster_home / "history" / "runs" / "index.db"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT run_id FROM concurrency_slots"
            " WHERE concurrency_key = ? AND run_id IS NOT NULL AND deleted = 0",
            (pool,),
        ).fetchall()
    return [row[0] for row in rows]


def run_pid(site: Site, run_id: str) -> int:
    """The pid of the process that executes ``run_id`` (the slide's child of `pathgen run`)."""
    with site.instance() as instance:
        return int(instance.get_run_by_id(run_id).tags[run_health.PROCESS_TAG].split("/")[2])


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_landing: Path) -> Site:
    site = build_site(tmp_path_factory.mktemp("dead_runs") / "site", landing_from=sample_landing)
    site.run(VENV_BIN / "pathgen", "run", "--select", "key:slides", "--strict", timeout=600)
    return site


def set_pool(site: Site, pool: str, limit: int) -> None:
    site.run(VENV_BIN / "dagster", "instance", "concurrency", "set", pool, str(limit))


def start_and_freeze_at_tiles(site: Site, slide: str) -> tuple[Command, str]:
    """A `pathgen run` of ``slide``'s tiles, frozen (SIGSTOP) once it holds its slot."""
    command = Command(site, "run", "--slide", slide, "--select", "key:tiles", "--strict")
    before = set(slot_holders(site, "tile_readers"))
    deadline = time.monotonic() + 240
    while True:
        assert command.process.poll() is None, command.output()
        assert time.monotonic() < deadline, command.output()
        claimed = set(slot_holders(site, "tile_readers")) - before
        if claimed:
            command.signal(signal.SIGSTOP)
            return command, claimed.pop()
        time.sleep(0.005)


def test_a_run_waiting_behind_a_killed_run_says_so_clears_it_and_finishes(site: Site):
    set_pool(site, "tile_readers", 0)  # paused: the run waits at tiles and says so
    paused = Command(site, "run", "--slide", SLIDES[2], "--select", "key:tiles", "--strict")
    wait_for(lambda: "needs a slot of pool" in paused.output(), timeout=240, what="a wait")
    assert "behind no run: the pool's limit is 0" in paused.output()
    set_pool(site, "tile_readers", 1)
    assert paused.wait(timeout=240) == 0, paused.output()
    holder, holder_id = start_and_freeze_at_tiles(site, SLIDES[0])  # alive, holding the only slot
    waiter = Command(site, "run", "--slide", SLIDES[1], "--select", "key:tiles", "--strict")
    try:
        wait_for(
            lambda: f"behind run {holder_id[:8]}" in waiter.output(),
            timeout=240,
            what="the waiting run to name the run it waits behind",
            show=waiter.output,
        )
        assert f"pid {run_pid(site, holder_id)} alive; holds tile_readers:tiles" in waiter.output()
        holder.signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert waiter.wait(timeout=300) == 0, waiter.output()
    finally:
        for command in (holder, waiter):
            if command.process.poll() is None:
                command.process.kill()
        set_pool(site, "tile_readers", 2)
    assert f"cleared dead run {holder_id[:8]}" in waiter.output()
    assert "1 of 1 slides succeeded" in waiter.output()
    with site.instance() as instance:
        dead = instance.get_run_by_id(holder_id)
        assert dead.status == dg.DagsterRunStatus.FAILURE
        assert dead.tags["dagster/failure_reason"] == "UNEXPECTED_TERMINATION"
        assert not instance.event_log_storage.get_concurrency_info("tile_readers").claimed_slots
        reruns = run_health.slides_needing_rerun(instance)
    assert [(r.slide_id, r.run_id) for r in reruns] == [(dead.tags["dagster/partition"], holder_id)]
    printed = site.run(VENV_BIN / "pathgen", "runs")
    assert "0 runs in progress" in printed
    assert f"pathgen run --slide {dead.tags['dagster/partition']} --select 'key:\"tiles\"'" in printed


def test_pathgen_runs_lists_killed_runs_and_clear_dead_frees_their_slots(site: Site):
    # Each is frozen holding its slot before the next starts (a `pathgen run` sweeps dead
    # runs when it starts), then both are killed.
    frozen = [start_and_freeze_at_tiles(site, slide) for slide in SLIDES[:2]]
    for command, _ in frozen:
        command.signal(signal.SIGKILL)
        command.wait(timeout=30)
    killed = [run_id for _, run_id in frozen]
    # The fault as found: the dead runs stay STARTED and keep both slots (2 of 2).
    with site.instance() as instance:
        assert {instance.get_run_by_id(r).status for r in killed} == {dg.DagsterRunStatus.STARTED}
        assert sorted(slot_holders(site, "tile_readers")) == sorted(killed)
    listing = subprocess.run(
        [str(VENV_BIN / "pathgen"), "runs"], cwd=site.root, env=site.env(), capture_output=True, text=True
    )
    assert listing.returncode == 1, listing.stdout  # dead runs present
    assert (
        "2 runs in progress" in listing.stdout
        and listing.stdout.count(" dead; holds tile_readers:tiles") == 2
    )
    assert "clear them with `pathgen runs --clear-dead`" in listing.stdout
    cleared = site.run(VENV_BIN / "pathgen", "runs", "--clear-dead")
    assert cleared.count("marked FAILED, slots freed") == 2, cleared
    with site.instance() as instance:
        assert {instance.get_run_by_id(r).status for r in killed} == {dg.DagsterRunStatus.FAILURE}
    assert slot_holders(site, "tile_readers") == []
