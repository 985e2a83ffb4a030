"""How many slides and steps run at once, from the machine: the laptop, CPU-node and GPU-node
profiles (``pathgen profile`` prints the one in force; ``deploy/set_pools.sh`` applies it).

A slide's run is CPU work on one core (torch and the model server are given one thread
each) until the caption agents, so a machine runs as many slides at once as it has cores,
unless memory says fewer: a slide peaks at about 1.2 GiB (``make bench``), budgeted at
:data:`SLIDE_GIB`. The profiles differ in what they leave alone and what they add:

============  =====================  ==================================================
profile       chosen when            slides at once / pools
============  =====================  ==================================================
``laptop``    no GPU, <= 8 cores     cores, and memory less 4 GiB kept for the desktop
``cpu-node``  no GPU, > 8 cores      cores, and all memory
``gpu-node``  ``nvidia-smi`` lists   as ``cpu-node``; the patch encoder moves to the
              a GPU                  ``gpu`` pool, one step per GPU
============  =====================  ==================================================

Pools: ``tile_readers`` (tiles) and ``cpu`` (the patch encoder on the CPU, and the caption
agents of the ``grounded`` backend, which are in-process CPU work) allow one step per slide
at once; ``gpu`` exists only on a GPU node; ``llm`` is 1 (the agents' steps when they call a
model server, which batches one step's requests itself; ``resources.llm.agent_pool``).
``PATHGEN_PROFILE`` names a profile instead of deriving it (``cpu-node`` on a GPU machine
leaves the GPU alone), and
``PATHGEN_POOL_<NAME>=N`` overrides one pool's limit.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

PROFILE_ENV = "PATHGEN_PROFILE"
PROFILES = ("laptop", "cpu-node", "gpu-node")
SLIDE_GIB = 1.5  # one slide's peak RSS (1.2 GiB on the 80k x 60k benchmark slide) + headroom
LAPTOP_RESERVED_GIB = 4.0
LAPTOP_MAX_CORES = 8


class ProfileError(ValueError):
    """PATHGEN_PROFILE names a profile this machine cannot run; the message says why."""


@dataclass(frozen=True)
class Profile:
    """A machine's shape and the concurrency derived from it."""

    name: str
    cores: int
    gpus: int
    memory_gib: float

    @property
    def slides_at_once(self) -> int:
        usable = self.memory_gib - (LAPTOP_RESERVED_GIB if self.name == "laptop" else 0.0)
        return max(1, min(self.cores, int(usable // SLIDE_GIB)))

    @property
    def encoder_pool(self) -> str:
        """The pool of patch_embeddings: ``gpu`` only where the encoder has a GPU."""
        return "gpu" if self.gpus else "cpu"

    def pool_limits(self, environ: dict[str, str] | None = None) -> dict[str, int]:
        environ = os.environ if environ is None else environ
        limits = {"tile_readers": self.slides_at_once, "llm": 1}
        limits[self.encoder_pool] = self.gpus or self.slides_at_once
        return {
            pool: int(environ.get(f"PATHGEN_POOL_{pool.upper()}", limit))
            for pool, limit in sorted(limits.items())
        }

    def describe(self) -> str:
        return (
            f"profile {self.name}: {self.cores} cores, {self.gpus} GPUs, "
            f"{self.memory_gib:.1f} GiB -> {self.slides_at_once} slides at once"
        )


@functools.cache
def machine_profile() -> Profile:
    """The profile in force: ``PATHGEN_PROFILE``, else derived from this machine."""
    cores = len(os.sched_getaffinity(0))
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = _gpu_count()
    derived = "gpu-node" if gpus else "cpu-node" if cores > LAPTOP_MAX_CORES else "laptop"
    name = os.environ.get(PROFILE_ENV, "").strip() or derived
    if name not in PROFILES:
        raise ProfileError(f"{PROFILE_ENV}={name!r} is not a profile; use one of {', '.join(PROFILES)}")
    if name == "gpu-node" and not gpus:
        raise ProfileError(
            f"{PROFILE_ENV}=gpu-node but `nvidia-smi -L` lists no GPU on this machine; "
            "unset it (the profile is then derived) or run where the GPUs are"
        )
    return Profile(name, cores, gpus if name == "gpu-node" else 0, memory_gib)


def _gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists (no torch import: the code location loads without it).
    An ``nvidia-smi`` that fails means no working driver, where torch finds no GPU either."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
