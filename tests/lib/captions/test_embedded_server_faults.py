"""A killed embedded llama.cpp server is reported as such, and its logs are cleaned (issue 16).

A real EmbeddedServer child (SmolLM2 on xllamacpp) is killed with SIGKILL. Before the fix
the only trace was "ConnectError ... gave up after 5 attempts" and the log was deleted;
logs of a parent killed before it could clean up stayed in the temp folder for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from pathgen_dagster.lib.captions.embedded_server import LOG_PREFIX, EmbeddedServer
from pathgen_dagster.lib.captions.llm import ChatClient, ChatRequest, user_message


def test_a_killed_server_reports_its_signal_and_keeps_its_log() -> None:
    server = EmbeddedServer(n_parallel=1, n_threads=1).start()
    try:
        pid = server._process.pid
        os.kill(pid, signal.SIGKILL)
        server._process.wait(timeout=10)
        with ChatClient(server.base_url, max_retries=1, backoff_s=0.01, timeout_s=2) as client:
            result = client.complete(ChatRequest(key="p", messages=[user_message("Hi")]))
        assert not result.ok and "ConnectError" in result.error
        report = server.exit_report()
    finally:
        server.stop()
    assert report is not None
    assert f"(pid {pid}) was killed by SIGKILL" in report
    kept = Path(report.split("its log is kept at ", 1)[1].split(";", 1)[0])
    assert kept.is_file() and kept.name.startswith(f"{LOG_PREFIX}exited-")
    assert server.exit_report() == report  # stop() kept it
    kept.unlink()


def test_logs_of_killed_parents_are_removed_at_the_next_start() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = Path(tempfile.gettempdir()) / f"{LOG_PREFIX}{int(dead.stdout)}-abc.log"
    stale.write_text("left by a parent killed with SIGKILL")
    with EmbeddedServer(n_parallel=1, n_threads=1) as server:
        own = server.log_path
        assert own.name.startswith(f"{LOG_PREFIX}{os.getpid()}-")
        assert not stale.exists()
    assert not own.exists()  # a clean stop deletes its own log
