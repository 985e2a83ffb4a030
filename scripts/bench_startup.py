"""Command start-up: CPU seconds and peak RSS a command pays before any work, against a baseline.

    python scripts/bench_startup.py [--baseline REF] [--repeat 5]

With ``REF`` (a commit, e.g. ``main``), checks it out into a temporary worktree and runs the
same commands against both trees, alternating, so that both see the same machine: importing the
definitions (what ``pathgen run``, ``pathgen export``, every Dagster code server and run
worker pay first) and ``pathgen sql 'select 1'``. CPU is user + system time of the child
(``os.wait4``), so other load on the machine does not inflate it the way it does wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from baseline_trees import compared_trees

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import definitions": [sys.executable, "-c", "import pathgen_dagster.definitions"],
    "pathgen sql 'select 1'": [sys.executable, "-m", "pathgen_dagster.cli", "sql", "select 1"],
}


def measure(command: list[str], tree: Path) -> tuple[float, float, float]:
    """(CPU s, wall s, peak RSS MiB) of one run of ``command`` with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed in {tree}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git ref to compare against")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with compared_trees(ROOT, args.baseline) as trees:
        print(f"{' vs '.join(trees)}, {args.repeat} runs each, medians")
        print(f"{'command':<26} {'tree':<10} {'CPU s':>7} {'wall s':>7} {'RSS MiB':>8}")
        for name, command in COMMANDS.items():
            runs = {tree: [] for tree in trees}
            for _ in range(args.repeat):
                for tree, path in trees.items():
                    runs[tree].append(measure(command, path))
            medians = {
                tree: [statistics.median(column) for column in zip(*rows, strict=True)]
                for tree, rows in runs.items()
            }
            for tree, (cpu, wall, rss) in medians.items():
                print(f"{name:<26} {tree:<10} {cpu:>7.2f} {wall:>7.2f} {rss:>8.0f}")
            if args.baseline:
                base, new = medians["baseline"], medians["this tree"]
                print(f"{name:<26} {'ratio':<10} {new[0] / base[0]:>7.2f} {new[1] / base[1]:>7.2f}"
                      f" {new[2] / base[2]:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
