"""Per-stage cost of one slide, slides -> training_pairs, against a baseline tree, and the diff.

    python scripts/bench_pipeline.py [--baseline REF] [--slide PATH] [--work DIR]

Runs every per-slide stage as its own ``pathgen run --select STAGE --in-process`` command on
one slide (default: the benchmark slide of ``pathgen samples --large``, 80k x 60k at 40x,
written under ``--work`` when missing) and prints wall seconds, CPU seconds (user + system
of the child, ``os.wait4``: other load on the machine does not inflate it), peak RSS and the
rows each stage wrote. A ``start-up`` row is the same command selecting nothing: what each
stage's command pays before any work (imports, definitions, instance). The stage rows
include it, so ``stage CPU - start-up CPU`` is the work.

Each stage of this tree is run a second time as direct calls of its asset and its checks
(``scripts/direct_stage.py``: the same body, without a run, executor or event log, into a
lakehouse of its own; rows "direct calls"), and the last table prints, per stage, the share
of the stage's CPU that the orchestration takes (``1 - direct / run``).

With ``--baseline REF`` the same stages run from a worktree of ``REF`` into a lakehouse of
their own, stage by stage alternating with this tree, and the tables both wrote are
compared row by row on every column but run ids, timestamps and latencies: "identical"
means the same row ids, captions, verdicts and numbers, to the bit; "identical but floats
within 1e-9" names float columns that moved in their last bits (and by how much) while
every other column is the same to the bit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from baseline_trees import compared_trees

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "slides",
    "tiles",
    "patch_embeddings",
    "patches",
    "descriptions",
    "revised_descriptions",
    "captions",
    "caption_quality",
    "training_pairs",
)
VOLATILE_SUFFIXES = ("run_id", "_at", "latency_s")
# Float columns (embeddings, measures) that moved by no more than this are named, not failed:
# the FFT LoG (lib/selection/nuclei.py) moves responses by ~1e-15.
FLOAT_TOLERANCE = 1e-9
DIRECT = "direct calls"
DEFAULT_WORK = ROOT / "build" / "bench"


def run(command: list[str], tree: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of ``command`` run from ``tree``."""
    started = time.perf_counter()
    with open(Path(env["PATHGEN_LAKEHOUSE"]).parent / "commands.log", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, stdout=log, stderr=log
        )
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed in {tree}: see {log.name}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def prepare(tree: Path, work: Path, slide: Path) -> dict[str, str]:
    """A landing zone holding ``slide``, a lakehouse and an instance for ``tree``."""
    shutil.rmtree(work, ignore_errors=True)
    landing = work / "landing"
    landing.mkdir(parents=True)
    (landing / slide.name).symlink_to(slide.resolve())
    (landing / "manifest.csv").write_text(f"file_name,tissue_site\n{slide.name},generic\n")
    env = {
        **os.environ,
        "PATHGEN_LANDING": str(landing),
        "PATHGEN_LAKEHOUSE": str(work / "lakehouse"),
        "DAGSTER_HOME": str(work / "dagster_home"),
        "PATHGEN_ALLOWED_LINK_ROOTS": str(slide.resolve().parent),
    }
    run([sys.executable, "-m", "pathgen_dagster.cli", "register"], tree, env)
    return env


def rows(env: dict[str, str], table: str, slide_id: str) -> pl.DataFrame:
    path = Path(env["PATHGEN_LAKEHOUSE"]) / table
    if not path.exists():
        return pl.DataFrame()
    frame = pl.read_delta(str(path))
    return frame.filter(pl.col("slide_id") == slide_id) if "slide_id" in frame.columns else frame


def compare(base: pl.DataFrame, new: pl.DataFrame) -> str:
    """'identical', 'identical but ...' naming float columns that moved by at most
    FLOAT_TOLERANCE, or which columns differ and in how many rows."""
    if base.columns != new.columns:
        return f"columns differ: {sorted(set(base.columns) ^ set(new.columns))}"
    if len(base) != len(new):
        return f"{len(base)} rows vs {len(new)}"
    keep = [c for c in base.columns if not c.endswith(VOLATILE_SUFFIXES)]
    key = [c for c in ("patch_id", "tile_id", "pair_id", "slide_id") if c in keep][:1] or keep[:1]
    base, new = base.select(keep).sort(key), new.select(keep).sort(key)
    differing, close = [], []
    for column in keep:
        a, b = base[column], new[column]
        # Lists of floats (embeddings) compare by hash, so NaN matches NaN.
        x, y = (a.hash(), b.hash()) if a.dtype.is_nested() else (a, b)
        same = (x == y) | (x.is_null() & y.is_null())
        count = int((~same.fill_null(False)).sum())
        if not count:
            continue
        gap = float_gap(a, b)
        if gap is not None and gap <= FLOAT_TOLERANCE:
            close.append(f"{column} ({count} rows, max |diff| {gap:.1e})")
        else:
            differing.append(f"{column} ({count} rows)")
    if differing:
        return "differs: " + ", ".join(differing)
    if not close:
        return "identical"
    return f"identical but floats within {FLOAT_TOLERANCE:g}: " + ", ".join(close)


def float_gap(a: pl.Series, b: pl.Series) -> float | None:
    """Largest |a - b| of two float (or list-of-float) columns of the same shape, NaN
    matching NaN; None when they are not floats or their lists differ in length."""
    if a.dtype.is_nested():
        if not (a.list.len() == b.list.len()).all():
            return None
        a, b = a.explode(), b.explode()
    if not (a.dtype.is_float() and b.dtype.is_float()):
        return None
    both_nan = a.is_nan() & b.is_nan()
    gap = (a - b).abs().filter(~both_nan.fill_null(False)).max()
    return float(gap) if gap is not None and gap == gap else None


def orchestration_share(table: pl.DataFrame) -> pl.DataFrame:
    """Per stage: CPU as a ``pathgen run`` command and as direct calls, and the run's share (%)."""
    run_cpu, direct_cpu = (
        table.filter(pl.col("tree") == tree).select("stage", pl.col("cpu_s").alias(column))
        for tree, column in (("this tree", "run_cpu_s"), (DIRECT, "direct_cpu_s"))
    )
    joined = run_cpu.join(direct_cpu, on="stage", maintain_order="left")
    stages = joined.filter(pl.col("stage") != "start-up")
    total = stages.select(pl.lit("all stages").alias("stage"), pl.col("run_cpu_s", "direct_cpu_s").sum())
    return pl.concat([joined, total]).with_columns(
        (100 * (1 - pl.col("direct_cpu_s") / pl.col("run_cpu_s"))).alias("orchestration_%")
    )


def benchmark_slide(work: Path = DEFAULT_WORK) -> Path:
    """The benchmark slide of ``pathgen samples --large`` under ``work``, written when missing."""
    from pathgen_dagster.lib.ingest.samples import BENCHMARK_SLIDE, build_benchmark_slide

    slide = work / "slide" / BENCHMARK_SLIDE.file_name
    if not slide.exists():
        print(f"writing the benchmark slide {slide} (a few minutes, once)", flush=True)
        build_benchmark_slide(slide.parent)
    return slide


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git ref to compare against (a worktree is made)")
    parser.add_argument("--slide", type=Path, help="slide file (default: the benchmark slide)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    slide = args.slide or benchmark_slide(args.work)
    with compared_trees(ROOT, args.baseline) as trees:
        envs = {
            name: prepare(tree, args.work / name.replace(" ", "_"), slide)
            for name, tree in trees.items()
        }
        envs[DIRECT] = prepare(trees["this tree"], args.work / "direct_calls", slide)
        slide_id = slide.stem
        results = []
        command = [sys.executable, "-m", "pathgen_dagster.cli", "run", "--in-process", "--slide", slide_id]
        start_up = [sys.executable, "-c", "from pathgen_dagster.definitions import defs; "
                    "defs().resolve_implicit_global_asset_job_def()"]
        direct = [sys.executable, str(ROOT / "scripts" / "direct_stage.py")]
        for stage in ("start-up", *STAGES):
            for name, tree in trees.items():
                stage_command = start_up if stage == "start-up" else [*command, "--select", stage]
                # This tree's stage again as direct calls of its asset and checks, into a
                # lakehouse of their own (the compared tables keep their versions): what the
                # stage costs without a run.
                commands = {name: stage_command}
                if name == "this tree":
                    commands[DIRECT] = [*direct, *(["--start-up"] if stage == "start-up"
                                                   else [stage, slide_id])]
                for label, each in commands.items():
                    wall, cpu, rss = run(each, tree, envs[label])
                    written = 0 if stage == "start-up" else len(rows(envs[label], stage, slide_id))
                    results.append({"stage": stage, "tree": label, "wall_s": wall, "cpu_s": cpu,
                                    "peak_rss_mib": rss, "rows": written})
                    print(f"{stage:<22}{label:<13}{wall:>8.1f} s wall{cpu:>8.1f} s CPU{rss:>7.0f} MiB"
                          f"{written:>7} rows", flush=True)
        table = pl.DataFrame(results)
        print(f"\nslide {slide.name}: per-stage cost (CPU includes each command's start-up)")
        with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=1, tbl_width_chars=200):
            print(table)
            work = table.filter(pl.col("stage") != "start-up")
            print(work.group_by("tree", maintain_order=True).agg(
                pl.col("cpu_s").sum().alias("total CPU s"),
                pl.col("wall_s").sum().alias("total wall s"),
                pl.col("peak_rss_mib").max().alias("max peak RSS MiB"),
            ))
            print(orchestration_share(table))
        if args.baseline:
            totals = work.group_by("tree").agg(pl.col("cpu_s").sum())
            cpu = dict(zip(totals["tree"], totals["cpu_s"], strict=True))
            print(f"CPU ratio this tree / baseline: {cpu['this tree'] / cpu['baseline']:.2f}")
            print("\noutputs, this tree vs baseline:")
            for stage in STAGES:
                base, new = (rows(envs[name], stage, slide_id) for name in ("baseline", "this tree"))
                verdict = compare(base, new)
                print(f"  {stage:<22}{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
