"""A local Ray cluster of separate node processes: a head and N worker nodes on 127.0.0.1.

What `ray start --head` and `ray start --address ...` do on real machines, on one machine:
each node is its own raylet with its own environment (Ray jobs inherit the environment of
the raylet they land on), its own CPUs and its own ports. Every process of the cluster
carries ``PATHGEN_RAY_CLUSTER=<token>`` and ``PATHGEN_RAY_NODE=<name>`` in its environment
(inherited from `ray start`, down to each job's entrypoint and the processes it forks), so
``kill_node`` takes down exactly one node and ``stop`` exactly this cluster, by process id:
`ray stop --force` would kill every Ray process on the machine, other people's included.

    python scripts/ray/local_cluster.py --workers 2 --seconds 60   # start, print, wait, stop
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER_ENV = "PATHGEN_RAY_CLUSTER"
NODE_ENV = "PATHGEN_RAY_NODE"
HEAD = "head"
# Ray's default worker port range on each node is 10002-19999; the ports picked here come
# from the kernel's ephemeral range (above 32768), so they cannot collide with it.
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with ({} if it is gone or not readable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def pids_with(marker: Mapping[str, str]) -> list[int]:
    """Processes whose environment holds every ``marker`` variable with its value."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ = process_environ(int(entry.name))
        if environ and all(environ.get(key) == value for key, value in marker.items()):
            found.append(int(entry.name))
    return found


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the field after the ")" that closes the command name is the state, then ppid
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (Ray's dashboard modules fork from a
    forkserver started with an environment of its own)."""
    parents = parent_pids()
    found = set(pids)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def kill_all(marker: Mapping[str, str], *, rounds: int = 5) -> int:
    """SIGKILL every process carrying ``marker`` and their descendants, until none is left;
    how many were killed."""
    killed = 0
    for _ in range(rounds):
        pids = with_descendants(pids_with(marker))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.5)
    return killed


@dataclass
class LocalRayCluster:
    """A head (no CPUs: it schedules, it does not run jobs) and ``workers`` worker nodes.

    Args:
        workers: worker nodes to start.
        worker_cpus: logical CPUs each worker node offers (Ray's scheduling unit).
        env: environment of every node (PATH must lead to the venv whose `dagster` jobs run).
        worker_env: extra environment of the worker nodes only (their own credentials).
    """

    workers: int = 2
    worker_cpus: int = 2
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    worker_env: Mapping[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(6))
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pathgen-ray-")))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)

    @property
    def ray_bin(self) -> str:
        return shutil.which("ray", path=self.env.get("PATH")) or str(Path(sys.executable).with_name("ray"))

    @property
    def address(self) -> str:
        """The job API (dashboard) address the run launcher is given."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i + 1}" for i in range(self.workers)]

    def _start_node(self, name: str, args: list[str], extra_env: Mapping[str, str]) -> None:
        ports = [
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
        ]  # fmt: skip
        env = {**self.env, **extra_env, CLUSTER_ENV: self.token, NODE_ENV: name}
        completed = subprocess.run(
            [self.ray_bin, "start", "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.temp_dir),
             "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", *ports, *args],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if completed.returncode != 0:
            output = completed.stdout[-3000:] + completed.stderr[-3000:]
            raise RuntimeError(f"ray start ({name}) exited {completed.returncode}:\n{output}")

    def start(self) -> LocalRayCluster:
        try:
            self._start_node(
                HEAD,
                ["--head", "--port", str(self.gcs_port), "--num-cpus", "0", "--include-dashboard", "true",
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                 "--ray-client-server-port", str(free_port())],
                {},
            )  # fmt: skip
            for name in self.worker_names:
                self.add_worker(name)
            self.wait_for_workers(self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, name: str) -> None:
        self._start_node(
            name,
            ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(self.worker_cpus)],
            self.worker_env,
        )

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes as the dashboard reports them."""
        with urllib.request.urlopen(f"{self.address}/nodes?view=summary", timeout=10) as response:
            summary = json.load(response)["data"]["summary"]
        return [node for node in summary if node["raylet"]["state"] == "ALIVE"]

    def wait_for_workers(self, count: int, *, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with_cpus = [n for n in self.alive_nodes() if n["raylet"]["resourcesTotal"].get("CPU", 0) > 0]
                if len(with_cpus) >= count:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} Ray worker nodes alive after {timeout}s")
            time.sleep(1)

    def node_of(self, pid: int) -> str | None:
        """The node (head, worker-1, ...) a process of this cluster belongs to."""
        environ = process_environ(pid)
        return environ.get(NODE_ENV) if environ.get(CLUSTER_ENV) == self.token else None

    def kill_node(self, name: str) -> int:
        """SIGKILL every process of node ``name`` (raylet, workers, jobs): a lost machine."""
        return kill_all({CLUSTER_ENV: self.token, NODE_ENV: name})

    def processes(self) -> list[int]:
        return pids_with({CLUSTER_ENV: self.token})

    def stop(self) -> None:
        """Kill every process of this cluster (by id) and remove its session folder."""
        kill_all({CLUSTER_ENV: self.token})
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60, help="how long to keep it up")
    args = parser.parse_args()
    with LocalRayCluster(workers=args.workers, worker_cpus=args.worker_cpus) as cluster:
        print(f"Ray job API at {cluster.address}; {len(cluster.alive_nodes())} nodes alive", flush=True)
        time.sleep(args.seconds)
    print(f"stopped; processes left: {len(cluster.processes())}")


if __name__ == "__main__":
    main()
