"""Chat completions over the OpenAI-compatible HTTP protocol, with retries and bounded fan-out.

One client serves every backend the agents use: a production ``vllm serve`` endpoint (text
or vision-language, images sent as base64 data URLs) and the embedded llama.cpp server of
:mod:`pathgen_dagster.lib.captions.embedded_server`. A failed request comes back as a
:class:`ChatResult` whose ``error`` says why; it never raises into the batch, so one bad patch
cannot lose the results of the others.
"""

from __future__ import annotations

import base64
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

Message = dict[str, Any]
"""One OpenAI-format chat message: ``{"role": ..., "content": str | list[content part]}``."""

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"


def system_message(text: str) -> Message:
    """A system message holding ``text``."""
    return {"role": "system", "content": text}


def user_message(text: str, image_jpeg: bytes | None = None) -> Message:
    """A user message: plain text, or an image part (base64 JPEG data URL) then a text part.

    The image goes first because LLaVA-style chat templates place the image token before
    the instruction; vLLM and llama.cpp both accept ``data:`` URLs in ``image_url`` parts.
    """
    if image_jpeg is None:
        return {"role": "user", "content": text}
    url = "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode("ascii")
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to run; ``key`` is the caller's id, echoed in the result.

    Args:
        key: caller's id for the request (e.g. a patch id), echoed in :class:`ChatResult`.
        messages: OpenAI-format messages (see :func:`user_message`).
        model: model name the server serves; None lets a single-model server choose.
        temperature: sampling temperature; 0 decodes greedily.
        top_p: nucleus sampling mass; 1 disables it.
        max_tokens: most tokens to generate.
        seed: sampling seed, for reproducible outputs; None lets the server choose.
        stop: strings that end generation.
        response_format: e.g. ``{"type": "json_object"}`` or a ``json_schema`` format,
            which vLLM and llama.cpp both enforce with constrained decoding.
    """

    key: str
    messages: Sequence[Message]
    model: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0
    stop: Sequence[str] = ()
    response_format: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Tuples, so a request cannot change after it was built (it may sit in a queue).
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))

    def payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/chat/completions`` for this request."""
        body: dict[str, Any] = {
            "messages": list(self.messages),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stream": False,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.response_format is not None:
            body["response_format"] = dict(self.response_format)
        return body


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one :class:`ChatRequest`: the completion, or ``error`` saying why not.

    Attributes:
        key: the request's key.
        text: the generated message content ("" on error).
        finish_reason: "stop", "length" (hit max_tokens) ..., None on error.
        prompt_tokens: prompt tokens the server counted (0 when unknown).
        completion_tokens: generated tokens the server counted (0 when unknown).
        latency_s: wall-clock seconds from first attempt to result, backoff included.
        attempts: HTTP requests sent for this result (1 = no retry).
        error: None on success, else what failed last.
        model: the model name the server reported (or the requested one on error).
    """

    key: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    error: str | None = None
    model: str | None = None

    @property
    def ok(self) -> bool:
        """True when the server returned a completion."""
        return self.error is None


class _Retryable(Exception):
    """A failure worth another attempt: connection, timeout, HTTP 429 or 5xx."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Fatal(Exception):
    """A failure that another attempt would repeat: HTTP 4xx, malformed response."""


class ChatClient:
    """Runs chat completions against ``{base_url}/v1/chat/completions``.

    Thread-safe. Each request gets up to ``max_retries`` retries with exponential backoff and
    jitter on connection errors, timeouts, HTTP 429 and 5xx, all within ``deadline_s``;
    other 4xx answers are returned at once since resending cannot fix them.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        api_key: sent as a bearer token (vLLM ``--api-key``); None sends none.
        timeout_s: seconds one HTTP attempt may take (connect, and each read).
        deadline_s: seconds one request may take in total, retries and backoff included.
        max_retries: retries after the first attempt.
        backoff_s: pause before the first retry; doubles each retry, times a 0.5-1.5 jitter.
        max_backoff_s: longest pause between attempts (also caps a server's Retry-After).
        max_concurrency: most requests in flight at once in :meth:`complete_many`.
        stage_deadline_s: seconds every request of this client together may take (one
            client serves one stage of one slide); None: no bound beyond ``deadline_s``.
        breaker_failures: consecutive failed attempts (connection errors, timeouts, 429,
            5xx) after which the circuit opens: no more requests are sent and every later
            one fails at once with :attr:`stopped` as the reason. None: never opens.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        deadline_s: float = 600.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_concurrency: int = 4,
        stage_deadline_s: float | None = None,
        breaker_failures: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url = _server_root(base_url)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_auth_headers(api_key),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )
        self._lock = threading.Lock()
        self._requests_sent = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self.stage_deadline_s = stage_deadline_s
        self.breaker_failures = breaker_failures
        self._stage_deadline = None if stage_deadline_s is None else time.monotonic() + stage_deadline_s
        self._consecutive_failures = 0
        self._stopped: str | None = None

    @property
    def stopped(self) -> str | None:
        """Why this client stopped asking (circuit open, stage deadline), or None."""
        with self._lock:
            return self._stopped

    def _stop_reason(self) -> str | None:
        """The reason to send nothing more, recording a passed stage deadline."""
        with self._lock:
            if (
                self._stopped is None
                and self._stage_deadline is not None
                and time.monotonic() >= self._stage_deadline
            ):
                self._stopped = (
                    f"stage deadline of {self.stage_deadline_s:g} s reached"
                    f" ({self.base_url} answered too slowly or not at all)"
                )
            return self._stopped

    def _record_attempt(self, error: str | None) -> None:
        """Counts consecutive failed attempts; opens the circuit at ``breaker_failures``."""
        with self._lock:
            if error is None:
                self._consecutive_failures = 0
                return
            self._consecutive_failures += 1
            if (
                self._stopped is None
                and self.breaker_failures is not None
                and self._consecutive_failures >= self.breaker_failures
            ):
                self._stopped = (
                    f"circuit open after {self._consecutive_failures} consecutive failed"
                    f" requests to {self.base_url} (last: {error})"
                )

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, retries included (0 proves a cache answered)."""
        with self._lock:
            return self._requests_sent

    @property
    def peak_in_flight(self) -> int:
        """Most HTTP requests this client ever had in flight at once."""
        with self._lock:
            return self._peak_in_flight

    def complete(self, request: ChatRequest) -> ChatResult:
        """The result of ``request``, after retries; failures are returned, never raised."""
        started = time.monotonic()
        deadline = started + self.deadline_s
        if self._stage_deadline is not None:
            deadline = min(deadline, self._stage_deadline)
        error = "deadline_s leaves no time for an attempt"
        attempts = 0
        for attempt in itertools.count(1):
            stopped = self._stop_reason()
            if stopped is not None:
                error = f"not sent: {stopped}" if attempt == 1 else f"{error}; {stopped}"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"{error}; deadline of {self.deadline_s:g} s reached"
                break
            attempts = attempt
            try:
                body = self._post(request, timeout_s=min(self.timeout_s, remaining))
                result = _parse_completion(request, body, attempt, time.monotonic() - started)
                self._record_attempt(None)
                return result
            except _Fatal as fatal:
                error = str(fatal)
                break
            except _Retryable as retryable:
                error, retry_after_s = str(retryable), retryable.retry_after_s
                self._record_attempt(error)
            except Exception as unexpected:  # never let one request kill a batch
                error = f"unexpected {type(unexpected).__name__}: {unexpected}"
                break
            if attempt > self.max_retries:
                error = f"{error}; gave up after {attempt} attempts"
                break
            pause = retry_after_s or self._backoff_s(attempt)
            if time.monotonic() + pause >= deadline:
                error = f"{error}; deadline of {self.deadline_s:g} s reached"
                break
            if self._stop_reason() is None:
                time.sleep(pause)
        return ChatResult(
            key=request.key,
            text="",
            finish_reason=None,
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=time.monotonic() - started,
            attempts=attempts,
            error=error,
            model=request.model,
        )

    def complete_many(
        self,
        requests: Iterable[ChatRequest],
        *,
        on_result: Callable[[ChatResult], None] | None = None,
    ) -> list[ChatResult]:
        """Results of ``requests`` in their order, with at most ``max_concurrency`` in flight.

        Args:
            requests: the requests to run.
            on_result: called in the calling thread with each result as it arrives (in
                completion order), so the caller can persist results and resume after a
                crash. If it raises, requests not yet started are cancelled and the error
                propagates.
        """
        pending = list(requests)
        results: list[ChatResult | None] = [None] * len(pending)
        if not pending:
            return []
        workers = min(self.max_concurrency, len(pending))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat") as pool:
            futures: dict[Future[ChatResult], int] = {
                pool.submit(self.complete, request): index for index, request in enumerate(pending)
            }
            try:
                for future in as_completed(futures):
                    result = future.result()
                    results[futures[future]] = result
                    if on_result is not None:
                        on_result(result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [result for result in results if result is not None]

    def close(self) -> None:
        """Closes the pooled HTTP connections."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, request: ChatRequest, *, timeout_s: float) -> dict[str, Any]:
        """The decoded JSON body of one successful POST; raises _Retryable or _Fatal."""
        with self._lock:
            self._requests_sent += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            response = self._http.post(
                CHAT_COMPLETIONS_PATH, json=request.payload(), timeout=timeout_s
            )
        except httpx.TransportError as error:  # connect, read, write, pool, protocol
            raise _Retryable(f"{type(error).__name__}: {error or 'no detail'}") from error
        finally:
            with self._lock:
                self._in_flight -= 1
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(
                f"HTTP {status}: {response.text[:300]}",
                _retry_after_s(response, self.max_backoff_s),
            )
        if status != 200:
            raise _Fatal(f"HTTP {status}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError as error:
            raise _Fatal(f"response is not JSON: {response.text[:300]!r}") from error

    def _backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        # Jitter spreads the retries of many threads that failed together.
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)


def wait_until_ready(
    base_url: str,
    timeout_s: float = 60.0,
    *,
    api_key: str | None = None,
    poll_s: float = 0.25,
) -> list[str]:
    """Ids of the models a server lists at ``/v1/models``, once it answers 200.

    vLLM and llama.cpp answer 503 (or refuse connections) while loading weights.

    Raises:
        TimeoutError: no 200 within ``timeout_s``; names the last failure.
    """
    root = _server_root(base_url)
    deadline = time.monotonic() + timeout_s
    last_failure = "no attempt"
    with httpx.Client(base_url=root, headers=_auth_headers(api_key)) as http:
        while True:
            try:
                response = http.get(MODELS_PATH, timeout=max(min(5.0, timeout_s), 0.1))
                if response.status_code == 200:
                    return [model["id"] for model in response.json().get("data", [])]
                last_failure = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as error:
                last_failure = f"{type(error).__name__}: {error}"
            if time.monotonic() + poll_s > deadline:
                raise TimeoutError(
                    f"{root}{MODELS_PATH} not ready after {timeout_s:g} s ({last_failure})"
                )
            time.sleep(poll_s)


def _parse_completion(
    request: ChatRequest, body: Mapping[str, Any], attempts: int, latency_s: float
) -> ChatResult:
    """A successful ChatResult from a chat.completion body; raises _Fatal when malformed."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise _Fatal(f"malformed completion ({error!r}): {str(body)[:300]}") from error
    usage = body.get("usage") or {}
    return ChatResult(
        key=request.key,
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_s=latency_s,
        attempts=attempts,
        error=None,
        model=body.get("model") or request.model,
    )


def _retry_after_s(response: httpx.Response, cap_s: float) -> float | None:
    """The server's Retry-After in seconds (capped), or None when absent or a date."""
    try:
        return min(float(response.headers["retry-after"]), cap_s)
    except (KeyError, ValueError):
        return None


def _server_root(base_url: str) -> str:
    """``base_url`` without a trailing slash or ``/v1`` (OpenAI SDK style URLs include it)."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer-token header for ``api_key``, or none."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
