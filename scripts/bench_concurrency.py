"""Slides per hour with one slide at a time and with the profile's slides at once, in one run.

    python scripts/bench_concurrency.py LANDING [--jobs N] [--select SELECTION]
    python scripts/bench_concurrency.py --equal-slides DIR     # two equal 40x slides

``--equal-slides DIR`` first writes, into DIR, two slides of the same recipe as the sample
zone's 40x slide (24,576 x 20,480, 12 islands of real H&E) with different island seeds, so
both slots carry the same load (the sample zone's four slides differ in size); then
measures on DIR.

Runs ``pathgen run`` over every slide in ``LANDING`` twice, each time into a fresh
lakehouse and instance with the profile's pool limits (``deploy/set_pools.sh``): first with
``--jobs 1`` (one slide after another, as ``pathgen run`` did before it ran slides at
once), then with ``--jobs N`` (default: ``pathgen profile``'s slides at once). Prints wall
seconds, CPU seconds of every process the command started (``os.wait4`` of the command:
its children and theirs), CPU utilisation (CPU / wall: 200 % is two cores busy all the
time) and slides per hour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_all(landing: Path, work: Path, jobs: int, select: str) -> tuple[float, float, int]:
    """(wall s, CPU s, slides) of one ``pathgen run --jobs JOBS`` over a fresh instance."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "PATHGEN_LANDING": str(landing),
        "PATHGEN_LAKEHOUSE": str(work / "lakehouse"),
        "DAGSTER_HOME": str(work / "dagster_home"),
        "PYTHONPATH": str(ROOT),
    }
    bin_dir = Path(sys.executable).parent
    with open(work / "commands.log", "w") as log:
        pathgen = [sys.executable, "-m", "pathgen_dagster.cli"]
        subprocess.run([*pathgen, "register"], env=env, check=True, stdout=log, stderr=log, cwd=ROOT)
        subprocess.run(
            [str(ROOT / "deploy" / "set_pools.sh")],
            env={**env, "DAGSTER": str(bin_dir / "dagster")},
            check=True,
            stdout=log,
            stderr=log,
        )
        slides = _slides(work / "dagster_home")
        started = time.perf_counter()
        process = subprocess.Popen(
            [*pathgen, "run", "--jobs", str(jobs), "--select", select, "--allow-failures"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"pathgen run --jobs {jobs} failed: see {log.name}")
        return wall, usage.ru_utime + usage.ru_stime, slides


def write_equal_slides(directory: Path) -> Path:
    """Two 40x slides of one recipe, different seeds (distinct bytes: not duplicates)."""
    from dataclasses import replace

    from pathgen_dagster.lib.ingest import samples

    recipe = samples.SYNTHETIC_SLIDES[0]
    samples.build_slides(
        directory,
        [replace(recipe, file_name=f"equal-aperio-40x-{seed}.svs", seed=seed) for seed in (11, 31)],
    )
    return directory


def _slides(dagster_home: Path) -> int:
    import dagster as dg

    from pathgen_dagster.partitions import SLIDES_PARTITION

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return len(instance.get_dynamic_partitions(SLIDES_PARTITION))


def main() -> int:
    from pathgen_dagster.profiles import machine_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("landing", type=Path, nargs="?")
    parser.add_argument("--equal-slides", type=Path, metavar="DIR")
    parser.add_argument("--jobs", type=int, default=machine_profile().slides_at_once)
    parser.add_argument("--select", default="*")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-concurrency")
    args = parser.parse_args()
    if args.equal_slides:
        args.landing = write_equal_slides(args.equal_slides)
    elif args.landing is None:
        parser.error("give LANDING or --equal-slides DIR")
    print(machine_profile().describe())
    rows = []
    for jobs in (1, args.jobs):
        wall, cpu, slides = run_all(args.landing.resolve(), args.work / f"jobs-{jobs}", jobs, args.select)
        rows.append((jobs, wall, cpu, slides))
        print(
            f"--jobs {jobs}: {slides} slides in {wall:.1f} s wall, {cpu:.1f} s CPU, "
            f"utilisation {cpu / wall:.0%}, {slides * 3600 / wall:.1f} slides/hour",
            flush=True,
        )
    (_, wall_1, _, _), (_, wall_n, _, _) = rows
    print(f"slides per hour, --jobs {args.jobs} / --jobs 1: {wall_1 / wall_n:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
