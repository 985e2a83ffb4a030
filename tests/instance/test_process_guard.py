"""A killed run worker's forkserver and forked steps die with it (issue 16).

A real parent process (standing in for the run worker: the same multiprocessing
forkserver with the same preload list as definitions.py, minus the heavy code location)
forks a step that sleeps, then is killed with SIGKILL. Without the guard the forkserver and
the step were seen alive minutes later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import multiprocessing as mp, sys, time
def step():
    time.sleep(120)
if __name__ == "__main__":
    context = mp.get_context("forkserver")
    context.set_forkserver_preload({preload!r})
    process = context.Process(target=step)
    process.start()
    from multiprocessing import forkserver
    print(forkserver._forkserver._forkserver_pid, process.pid, flush=True)
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("guarded", [True, False])
def test_forkserver_and_step_die_with_a_killed_parent(tmp_path: Path, guarded: bool):
    preload = ["pathgen_dagster.process_guard"] if guarded else []
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(preload=preload))
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    forkserver, step = map(int, parent.stdout.readline().split())
    try:
        assert alive(forkserver) and alive(step)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (alive(forkserver) or alive(step)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if guarded:
            assert not alive(forkserver) and not alive(step)
        else:  # the fault as found: both outlive the killed parent
            assert alive(step)
    finally:
        for pid in (forkserver, step):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
