"""The background watchers' polling loop (run_health.polling): ticks while the block runs,
one last tick after it, and a tick that fails ends it without touching the block."""

from __future__ import annotations

import threading
import time

from pathgen_dagster.run_health import polling


def test_ticks_while_the_block_runs_then_once_more_after_it():
    ticks: list[bool] = []

    def tick(finished: bool) -> bool:
        ticks.append(finished)
        return True

    with polling("test-polling", 0.01, tick):
        time.sleep(0.2)
    assert len(ticks) >= 3 and ticks[-1] is True and not any(ticks[:-1])


def test_a_tick_returning_false_ends_the_polling_and_the_block_goes_on():
    ticks: list[bool] = []

    def tick(finished: bool) -> bool:
        ticks.append(finished)
        return False  # as a watcher that could not read the instance

    with polling("test-polling", 0.01, tick):
        time.sleep(0.2)
        assert not any(t.name == "test-polling" for t in threading.enumerate())
    assert ticks == [False]
