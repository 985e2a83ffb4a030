"""Seconds a stage spends on a model server that accepts and never answers, with and
without the circuit breaker (issue 16). The project's defaults (timeout 120 s, deadline
600 s, 4 retries, 4 in flight) scaled down by 240x so it runs in seconds; prints the ratio.

    .venv/bin/python scripts/bench_hung_server.py
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pathgen_dagster.lib.captions.llm import ChatClient  # noqa: E402
from tests.lib.captions.test_hung_server import _Hangs, requests  # noqa: E402

SCALE = 240.0
PATCHES = 4


def stage_seconds(url: str, breaker: int | None) -> tuple[float, float, int]:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with ChatClient(
        url,
        timeout_s=120 / SCALE,
        deadline_s=600 / SCALE,
        max_retries=4,
        backoff_s=0.5 / SCALE,
        max_concurrency=4,
        breaker_failures=breaker,
    ) as chat:
        chat.complete_many(requests(PATCHES))
        sent = chat.requests_sent
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        time.perf_counter() - started,
        (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime),
        sent,
    )


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hangs)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    base_wall, base_cpu, base_sent = stage_seconds(url, None)
    wall, cpu, sent = stage_seconds(url, 4)
    _Hangs.release.set()
    server.shutdown()
    print(f"{PATCHES} patches, hung server, defaults / {SCALE:g}")
    print(
        f"  no breaker: {base_wall:6.2f} s wall ({base_wall * SCALE:7.0f} s full scale), {base_sent} requests"
    )
    print(f"  breaker 4 : {wall:6.2f} s wall ({wall * SCALE:7.0f} s full scale), {sent} requests")
    print(f"  ratio wall {base_wall / wall:.1f}x, cpu {base_cpu:.3f}/{cpu:.3f} s")


if __name__ == "__main__":
    main()
