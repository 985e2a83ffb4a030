"""ChatClient against a real embedded llama.cpp server (SmolLM2), plus its pure helpers.

Tests marked slow start real servers; the 429/5xx tests use a stub, because llama.cpp
cannot be made to answer those statuses on demand.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pathgen_dagster.lib.captions.agent_prompts import REVISE_FACTS
from pathgen_dagster.lib.captions.edit_log import REVISION_RESPONSE_FORMAT, parse_revision
from pathgen_dagster.lib.captions.embedded_server import EmbeddedServer
from pathgen_dagster.lib.captions.llm import (
    ChatClient,
    ChatRequest,
    ChatResult,
    system_message,
    user_message,
    wait_until_ready,
)

PROMPT = "In one sentence, describe the cells of a normal colon gland."


def request(key: str, max_tokens: int = 16, **options: object) -> ChatRequest:
    return ChatRequest(key=key, messages=[user_message(PROMPT)], max_tokens=max_tokens, **options)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(n_parallel=4, ctx_per_slot=512) as running:
        yield running


@pytest.fixture()
def client(server: EmbeddedServer) -> Iterator[ChatClient]:
    with ChatClient(server.base_url, max_concurrency=4, timeout_s=60) as chat:
        yield chat


# --- pure helpers -----------------------------------------------------------------------


def test_user_message_carries_image_as_jpeg_data_url() -> None:
    assert user_message("hi") == {"role": "user", "content": "hi"}
    message = user_message("describe", b"\xff\xd8jpeg")
    image, text = message["content"]
    assert image["type"] == "image_url"
    prefix, encoded = image["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    assert base64.b64decode(encoded) == b"\xff\xd8jpeg"
    assert text == {"type": "text", "text": "describe"}


def test_payload_holds_only_the_options_set() -> None:
    plain = ChatRequest("k", [system_message("s"), user_message("u")], seed=None)
    assert plain.payload() == {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 256,
        "stream": False,
    }
    full = ChatRequest(
        "k", [user_message("u")], model="m", seed=7, stop=["\n"], response_format={"type": "x"}
    )
    body = full.payload()
    assert (body["model"], body["seed"], body["stop"], body["response_format"]) == (
        "m",
        7,
        ["\n"],
        {"type": "x"},
    )
    assert isinstance(full.messages, tuple) and isinstance(full.stop, tuple)


def test_base_url_accepts_openai_sdk_style_v1_suffix() -> None:
    with ChatClient("http://127.0.0.1:9/v1/") as chat:
        assert chat.base_url == "http://127.0.0.1:9"


# --- real server ------------------------------------------------------------------------


@pytest.mark.slow
def test_wait_until_ready_lists_the_served_model(server: EmbeddedServer) -> None:
    assert server.model_id in wait_until_ready(server.base_url, timeout_s=10)


@pytest.mark.slow
def test_completion(server: EmbeddedServer, client: ChatClient) -> None:
    result = client.complete(request("one", model=server.model_id))
    assert result.ok, result.error
    assert result.key == "one"
    assert result.text.strip()
    assert result.finish_reason in {"stop", "length"}
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 16
    assert result.attempts == 1 and result.latency_s > 0
    assert result.model == server.model_id
    assert client.requests_sent == 1


@pytest.mark.slow
def test_seeded_greedy_completion_is_reproducible(client: ChatClient) -> None:
    first, second = client.complete(request("a")), client.complete(request("b"))
    assert first.ok and second.ok
    assert first.text == second.text


@pytest.mark.slow
def test_eight_requests_four_in_flight_all_succeed(client: ChatClient) -> None:
    arrived: list[ChatResult] = []
    requests = [request(f"r{i}") for i in range(8)]
    results = client.complete_many(requests, on_result=arrived.append)
    assert [r.key for r in results] == [f"r{i}" for i in range(8)]
    assert all(r.ok for r in results), [r.error for r in results]
    assert sorted(r.key for r in arrived) == sorted(r.key for r in results)
    assert client.requests_sent == 8
    assert 1 < client.peak_in_flight <= 4


@pytest.mark.slow
def test_failing_callback_stops_the_batch(server: EmbeddedServer) -> None:
    def crash(result: ChatResult) -> None:
        raise RuntimeError("disk full")

    with ChatClient(server.base_url, max_concurrency=1) as chat:
        with pytest.raises(RuntimeError, match="disk full"):
            chat.complete_many([request(f"r{i}") for i in range(6)], on_result=crash)
        # The first result, plus at most the one the single worker had already started.
        assert chat.requests_sent <= 2


@pytest.mark.slow
def test_client_errors_are_not_retried(server: EmbeddedServer) -> None:
    with ChatClient(server.base_url + "/no-such-prefix", max_retries=3) as wrong_route:
        result = wrong_route.complete(request("route"))
        assert result.error is not None and result.error.startswith("HTTP 404")
        assert result.attempts == 1 and wrong_route.requests_sent == 1
    with ChatClient(server.base_url, max_retries=3) as chat:
        too_long = ChatRequest("long", [user_message("gland " * 2000)], max_tokens=8)
        result = chat.complete(too_long)
        assert result.error is not None and result.error.startswith("HTTP 400")
        assert result.attempts == 1 and chat.requests_sent == 1


@pytest.mark.slow
def test_json_schema_response_format_gives_parseable_revision(client: ChatClient) -> None:
    # Constrained decoding: even SmolLM2 can only emit schema-valid JSON. Whether the edits
    # make sense is another matter, so only the structure is checked here.
    messages = REVISE_FACTS.render(
        facts="- tissue covers 90% of the patch\n- nuclei: dense, large",
        draft="Sparse tissue with small nuclei.",
    )
    result = client.complete(
        ChatRequest("rev", messages, max_tokens=120, response_format=REVISION_RESPONSE_FORMAT)
    )
    assert result.ok, result.error
    if result.finish_reason == "stop":
        body = json.loads(result.text)
        assert set(body) == {"revised", "edits"}
        try:
            parse_revision(result.text)
        except ValueError as error:  # per-op rules go beyond the schema
            assert "edits[" in str(error)


@pytest.mark.slow
def test_stopped_server_fails_remaining_requests_and_restart_recovers() -> None:
    with EmbeddedServer(n_parallel=1, ctx_per_slot=256) as server:
        port = server.port
        chat = ChatClient(server.base_url, max_concurrency=1, max_retries=2, backoff_s=0.05)

        def stop_after_two(result: ChatResult) -> None:
            if result.key == "r1":
                server.stop()

        results = chat.complete_many(
            [request(f"r{i}", max_tokens=8) for i in range(6)], on_result=stop_after_two
        )
    assert [r.ok for r in results[:2]] == [True, True]
    failed = [r for r in results if not r.ok]
    # r2 may have been in flight when the server went; r3.. certainly find it gone.
    assert len(failed) >= 3
    for result in failed:
        assert result.attempts == 3, result
        assert "gave up after 3 attempts" in (result.error or "")
    sent_before = chat.requests_sent

    with EmbeddedServer(port=port, n_parallel=1, ctx_per_slot=256):
        rerun = chat.complete_many([request(r.key, max_tokens=8) for r in failed])
    assert all(r.ok for r in rerun), [r.error for r in rerun]
    assert chat.requests_sent == sent_before + len(failed)
    chat.close()


@pytest.mark.slow
def test_deadline_bounds_retries_against_a_dead_port() -> None:
    with EmbeddedServer(n_parallel=1, ctx_per_slot=256) as server:
        dead_url = server.base_url
    with ChatClient(dead_url, max_retries=1000, backoff_s=0.05, deadline_s=1.0) as chat:
        started = time.monotonic()
        result = chat.complete(request("dead"))
        elapsed = time.monotonic() - started
    assert result.error is not None and "deadline of 1 s reached" in result.error
    assert "ConnectError" in result.error
    assert 3 <= result.attempts < 1000
    assert elapsed < 1.5


@pytest.mark.slow
def test_deadline_cuts_a_slow_generation(server: EmbeddedServer) -> None:
    # Even a short answer takes longer than 20 ms to prefill and generate (a quiet machine
    # answered 28 tokens in 0.16 s); each attempt may wait 0.02 s, all of them 0.3 s.
    with ChatClient(server.base_url, timeout_s=0.02, deadline_s=0.3, backoff_s=0.05) as chat:
        result = chat.complete(request("slow", max_tokens=400, temperature=1.0, seed=1))
    assert result.error is not None and "ReadTimeout" in result.error
    assert "deadline" in result.error
    assert result.attempts >= 2
    assert result.latency_s < 1.5


# --- 429 / 5xx: llama.cpp cannot be made to answer these on demand, so a stub does --------


class _Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with the next (status, headers) of ``script``; a FAKE backend."""

    script: list[tuple[int, dict[str, str]]] = []
    seen = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        status, headers = type(self).script[min(type(self).seen, len(type(self).script) - 1)]
        type(self).seen += 1
        body = b'{"error": "scripted"}'
        if status == 200:
            body = json.dumps(
                {
                    "model": "stub",
                    "choices": [{"message": {"content": "Glands."}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                }
            ).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def scripted_url() -> Iterator[str]:
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    _Scripted.seen = 0
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{stub.server_address[1]}"
    stub.shutdown()
    stub.server_close()


def test_429_and_5xx_are_retried_until_success(scripted_url: str) -> None:
    _Scripted.script = [(503, {}), (429, {"Retry-After": "0.1"}), (500, {}), (200, {})]
    with ChatClient(scripted_url, max_retries=3, backoff_s=0.01) as chat:
        result = chat.complete(request("flaky"))
    assert result.ok and result.text == "Glands." and result.model == "stub"
    assert result.attempts == 4 and chat.requests_sent == 4


def test_persistent_5xx_gives_up_after_max_retries(scripted_url: str) -> None:
    _Scripted.script = [(502, {})]
    with ChatClient(scripted_url, max_retries=2, backoff_s=0.01) as chat:
        results = chat.complete_many([request("a"), request("b")])
    for result in results:
        assert result.error is not None and result.error.startswith("HTTP 502")
        assert result.attempts == 3
    assert chat.requests_sent == 6
