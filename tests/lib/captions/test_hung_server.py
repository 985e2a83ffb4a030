"""A model server that accepts and never answers must not hold a slide (issue 16).

A real local HTTP server answers ``GET /v1/models`` and accepts every POST without ever
replying. Before the fix each request spent its whole ``deadline_s`` in retries (1,808 s
for a 4-patch slide with the defaults); the circuit breaker stops after one round of
timeouts, and the stage deadline bounds the stage however the server misbehaves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pathgen_dagster.lib.captions.llm import ChatClient, ChatRequest, user_message


class _Hangs(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        body = json.dumps({"data": [{"id": "hung"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).release.wait(60)  # accepted, never answered

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hung_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hangs)
    server.daemon_threads = True
    _Hangs.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Hangs.release.set()
    server.shutdown()
    server.server_close()


def requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(key=f"p{i}", messages=[user_message("Describe.")]) for i in range(n)]


def test_breaker_stops_after_one_round_of_timeouts(hung_url: str) -> None:
    with ChatClient(
        hung_url, timeout_s=0.3, deadline_s=60, max_retries=4, backoff_s=0.01, breaker_failures=4
    ) as chat:
        results = chat.complete_many(requests(12))
        sent = chat.requests_sent
        stopped = chat.stopped
    assert stopped is not None and stopped.startswith("circuit open after 4 consecutive failed")
    assert "ReadTimeout" in stopped
    # One round of 4 in flight, then nothing: without the breaker, 12 x 5 attempts.
    assert sent <= 4 + 3
    assert all(not r.ok for r in results)
    assert sum("not sent: circuit open" in r.error for r in results) >= 12 - 7


def test_stage_deadline_bounds_a_stage_whatever_the_retries(hung_url: str) -> None:
    started = time.monotonic()
    with ChatClient(
        hung_url, timeout_s=0.4, deadline_s=60, max_retries=50, backoff_s=0.01, stage_deadline_s=1.5
    ) as chat:
        results = chat.complete_many(requests(6))
        stopped = chat.stopped
    assert stopped is not None and stopped.startswith("stage deadline of 1.5 s reached")
    assert all(not r.ok for r in results)
    assert time.monotonic() - started < 1.5 + 0.4 + 1.0  # the deadline plus one attempt
