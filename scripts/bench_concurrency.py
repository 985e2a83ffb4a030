"""Slides per hour with one slide at a time and with the profile's slides at once, in one run.

    python scripts/bench_concurrency.py LANDING [--jobs N] [--select SELECTION]
    python scripts/bench_concurrency.py --equal-slides DIR     # two equal 40x slides
    python scripts/bench_concurrency.py --equal-slides DIR --large   # two of real size

``--equal-slides DIR`` first writes, into DIR, two slides of the same recipe as the sample
zone's 40x slide (24,576 x 20,480, 12 islands of real H&E) with different island seeds, so
both slots carry the same load (the sample zone's four slides differ in size); then
measures on DIR. With ``--large`` the two are of the benchmark slide's recipe (80k x 60k,
``pathgen samples --large``; the first, of its seed, is that slide's bytes, ~3 minutes to
write each one).

Runs ``pathgen run`` over every slide in ``LANDING`` twice, each time into a fresh
lakehouse and instance with the profile's pool limits (``deploy/set_pools.sh``): first with
``--jobs 1`` (one slide after another, as ``pathgen run`` did before it ran slides at
once), then with ``--jobs N`` (default: ``pathgen profile``'s slides at once). Prints wall
seconds, CPU seconds of every process the command started (``os.wait4`` of the command:
its children and theirs), CPU utilisation (CPU / wall: 200 % is two cores busy all the
time) and slides per hour. For the run with slides at once it also says where the idle
core-time went: the process tree's CPU is sampled every 0.2 s (``/proc``), and split at the
first slide run's start and the last one's end (the instance's event log) into start-up
(the command's and its children's imports, before any run), the runs, and the wind-down
(children exiting, the summary table).
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


def run_all(landing: Path, work: Path, jobs: int, select: str) -> tuple[float, float, int, list]:
    """(wall s, CPU s, slides, phases) of one ``pathgen run --jobs JOBS`` over a fresh instance."""
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
        samples, status, usage = _sampled_wait(process.pid)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"pathgen run --jobs {jobs} failed: see {log.name}")
        cpu = usage.ru_utime + usage.ru_stime
        return wall, cpu, slides, _phases(samples, cpu, work / "dagster_home")


def _sampled_wait(pid: int, every_s: float = 0.2):
    """Waits for ``pid``: its (time, tree CPU s) samples, then wait4's status and usage."""
    samples = [(time.time(), 0.0)]
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return samples, status, usage
        samples.append((time.time(), _tree_cpu(pid)))
        time.sleep(every_s)


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, with the children they reaped."""
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree, frontier = set(), {root}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _phases(samples: list[tuple[float, float]], cpu: float, dagster_home: Path) -> list[tuple]:
    """(phase, wall s, CPU s) of start-up, runs and wind-down, split at the runs' first
    start and last end; the last sample is replaced by the command's own total."""
    import dagster as dg

    ends = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        stamps = [
            entry.timestamp
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id, of_type=ends)
        ]
    times = [t for t, _ in samples] + [time.time()]
    cpus = [c for _, c in samples] + [cpu]

    def cpu_at(moment: float) -> float:
        index = max(i for i, t in enumerate(times) if t <= moment)
        return cpus[index]

    cuts = [times[0], min(stamps), max(stamps), times[-1]]
    return [
        (name, cuts[i + 1] - cuts[i], cpu_at(cuts[i + 1]) - cpu_at(cuts[i]))
        for i, name in enumerate(("start-up", "runs", "wind-down"))
    ]


def write_equal_slides(directory: Path, large: bool) -> Path:
    """Two 40x slides of one recipe, different seeds (distinct bytes: not duplicates)."""
    from dataclasses import replace

    from pathgen_dagster.lib.ingest import samples

    if large:
        recipe = samples.BENCHMARK_SLIDE
        stem = recipe.file_name.removesuffix(".svs")
        seeds = (recipe.seed, recipe.seed + 1)
        samples.build_benchmark_slide(
            directory,
            recipes=[replace(recipe, file_name=f"{stem}-{seed}.svs", seed=seed) for seed in seeds],
        )
        return directory
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
    parser.add_argument("--large", action="store_true", help="equal slides of real size")
    parser.add_argument("--jobs", type=int, default=machine_profile().slides_at_once)
    parser.add_argument("--select", default="*")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-concurrency")
    args = parser.parse_args()
    if args.equal_slides:
        args.landing = write_equal_slides(args.equal_slides, args.large)
    elif args.landing is None:
        parser.error("give LANDING or --equal-slides DIR")
    print(machine_profile().describe())
    rows = []
    cores = machine_profile().cores
    for jobs in (1, args.jobs):
        wall, cpu, slides, phases = run_all(
            args.landing.resolve(), args.work / f"jobs-{jobs}", jobs, args.select
        )
        rows.append((jobs, wall))
        print(
            f"--jobs {jobs}: {slides} slides in {wall:.1f} s wall, {cpu:.1f} s CPU, "
            f"utilisation {cpu / wall:.0%}, {slides * 3600 / wall:.1f} slides/hour",
            flush=True,
        )
    print(f"where --jobs {args.jobs} left its {cores} cores idle ({cores * wall - cpu:.1f} core-s):")
    for name, phase_wall, phase_cpu in phases:
        print(
            f"  {name:10s} {phase_wall:6.1f} s wall {phase_cpu:6.1f} s CPU "
            f"({phase_cpu / max(phase_wall, 1e-9):.0%}), idle {cores * phase_wall - phase_cpu:5.1f} core-s"
        )
    (_, wall_1), (_, wall_n) = rows
    print(f"slides per hour, --jobs {args.jobs} / --jobs 1: {wall_1 / wall_n:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
