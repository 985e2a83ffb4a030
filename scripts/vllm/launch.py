"""Run vLLM's OpenAI-compatible server on CPU as a managed subprocess (standard library only).

Reference for pipeline code that launches the server itself; it needs no package from the
vLLM venv in the calling interpreter (it only spawns that venv's python).

    from launch import VllmServer          # scripts/vllm/launch.py
    with VllmServer("models/gemma-3-270m", port=8011) as srv:
        print(srv.base_url)                # http://127.0.0.1:8011/v1  -> PATHGEN_LLM_URL

or from a shell (blocks; Ctrl-C or SIGTERM stops the server):

    python scripts/vllm/launch.py models/gemma-3-270m 8011 [--no-eager]

The server runs in its own session / process group. stop() sends SIGTERM to the group (the
API server, the engine-core process and the worker all exit within ~2 s), waits, then
SIGKILLs the group after `grace` seconds. The API server process exits before its
children do: wait for the whole group, not just the leader.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-vllm"


def server_env(kv_cache_gib: int = 1, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),  # GiB; without it vLLM wants 0.9 x RAM free
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    return env


def server_command(
    model_dir: str | Path,
    port: int,
    venv: str | Path = DEFAULT_VENV,
    served_name: str = "gemma-3-270m",
    max_model_len: int = 2048,
    eager: bool = True,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    # `vllm serve` fails in vllm-cpu 0.32.0 (its console script looks up the distribution
    # "vllm"); this module is the same server with the same flags, model given by --model.
    cmd = [
        str(Path(venv) / "bin" / "python"),
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(max_model_len),
    ]
    if eager:
        cmd.append("--enforce-eager")  # skips torch.compile: ~45 s instead of ~2 min to start
    return cmd + list(extra)


class VllmServer:
    def __init__(
        self,
        model_dir,
        port: int = 8011,
        *,
        log_path=None,
        ready_timeout: float = 600,
        grace: float = 30,
        **cmd_kwargs,
    ):
        self.cmd = server_command(model_dir, port, **cmd_kwargs)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.load_s: float | None = None

    def start(self) -> VllmServer:
        t0 = time.monotonic()
        # The child keeps its own copy of the log descriptor; ours can close at once.
        with open(self.log_path or os.devnull, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while True:
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=5).read()
                break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode} before it was ready "
                    f"(log: {self.log_path})"
                )
            if time.monotonic() - t0 > self.ready_timeout:
                self.stop()
                raise TimeoutError(
                    f"vLLM not ready after {self.ready_timeout} s (log: {self.log_path})"
                )
            time.sleep(1)
        self.load_s = time.monotonic() - t0
        return self

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self._group_alive():
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model_dir", nargs="?", default=str(ROOT / "models" / "gemma-3-270m"))
    ap.add_argument("port", nargs="?", type=int, default=8011)
    ap.add_argument("--venv", default=str(DEFAULT_VENV))
    ap.add_argument("--no-eager", action="store_true", help="let vLLM torch.compile (slower start)")
    ap.add_argument("--log", default=None, help="server log file (default: discard)")
    args = ap.parse_args(argv)
    srv = VllmServer(
        args.model_dir, args.port, venv=args.venv, eager=not args.no_eager, log_path=args.log
    )
    print(" ".join(srv.cmd), flush=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt  # unwinds start() or the wait below; finally stops the server

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        srv.start()
        print(f"ready in {srv.load_s:.1f} s: {srv.base_url}", flush=True)
        while srv.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        t = time.monotonic()
        srv.stop()
        print(f"stopped in {time.monotonic() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
