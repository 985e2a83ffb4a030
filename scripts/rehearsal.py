"""The 7,000-slide rehearsal: PathGen's metadata scale without pixels (a benchmark, not a test).

Registers N synthetic slide partitions in the Dagster instance of ``DAGSTER_HOME`` (SQLite,
or PostgreSQL when its dagster.yaml says so), writes per-slide rows at PathGen's density
(``--patches`` checked captions per slide, ~90 % passing: ~220 pairs) into the lakehouse at
``--root`` (a folder, or ``s3://bucket/prefix`` with the object-store settings in the
environment, as for ``pathgen``), then measures, each against a baseline in the same run:

- instance partition operations (add in batches, list, membership test);
- files per table before/after maintenance (compaction, checkpoint, vacuum);
- DuckDB one-slide and whole-dataset query times before/after maintenance;
- an incremental one-slide rebuild of ``training_pairs`` vs the full rebuild;
- the per-slide orchestration overhead: a Dagster materialization of one slide's
  ``training_pairs`` (step wall time) minus the same build done directly (the stage's own
  compute), as a share of the step's wall time.

Prints CPU seconds beside wall seconds. Not measured here: UI page loads (see docs/scale.md).

Usage: python scripts/rehearsal.py --root build/rehearsal [--slides 7000] [--patches 245]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from generate_training_data import generate, slide_ids  # noqa: E402

from assets.sql_models import build_model, sql_model_assets, write_model  # noqa: E402
from pathgen_dagster.lib.dataset.sql_models import discover, quote  # noqa: E402
from pathgen_dagster.lib.maintenance.tables import maintain  # noqa: E402
from pathgen_dagster.partitions import SLIDES_PARTITION  # noqa: E402
from pathgen_dagster.resources.lakehouse import Lakehouse  # noqa: E402

PARTITION_BATCH = 1000


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def median_of(function: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def fmt(seconds: tuple[float, float]) -> str:
    return f"{seconds[0]:8.2f}s wall {seconds[1]:8.2f}s cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="build/rehearsal", help="folder or s3://bucket/prefix")
    parser.add_argument("--slides", type=int, default=7000)
    parser.add_argument("--patches", type=int, default=245, help="mean checked captions/slide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duckdb-memory", default="3GB")
    args = parser.parse_args()
    lakehouse = Lakehouse.from_env(args.root)
    if not lakehouse.is_object_store:
        shutil.rmtree(args.root, ignore_errors=True)
    elif lakehouse.existing_tables():
        print(f"{lakehouse.storage.base} already holds tables: give an empty prefix")
        return 2
    print(f"== rehearsal: {args.slides:,} slides into {lakehouse.storage.base}")

    # -- Dagster instance: partition operations ------------------------------------------
    ids = slide_ids(args.slides)  # the ids the generator writes rows for
    with dg.DagsterInstance.get() as instance:
        storage = type(instance.run_storage).__name__
        started = clock()
        for start in range(0, len(ids), PARTITION_BATCH):
            instance.add_dynamic_partitions(SLIDES_PARTITION, ids[start : start + PARTITION_BATCH])
        added = since(started)
        listed = median_of(lambda: instance.get_dynamic_partitions(SLIDES_PARTITION), args.repeats)
        member = median_of(lambda: instance.has_dynamic_partition(SLIDES_PARTITION, ids[-1]), args.repeats)
        print(f"== instance ({storage})")
        print(f"   add {len(ids):,} partitions in batches of {PARTITION_BATCH}: {fmt(added)}")
        print(f"   list all partitions: {listed * 1000:.1f} ms; one membership test: {member * 1000:.2f} ms")

        # -- per-slide rows ----------------------------------------------------------------
        started = clock()
        written = generate(lakehouse, slides=args.slides, mean_patches=args.patches, progress=lambda _: None)
        print(f"== upstream tables written: {fmt(since(started))}")
        model = next(m for m in discover() if m.name == "training_pairs")
        started = clock()
        full = build_model(
            lakehouse, model, partition_key=None, run_id="rehearsal-full", memory_limit=args.duckdb_memory
        )
        for start in range(0, len(written), 1000):
            batch = pa.array(written[start : start + 1000])
            rows = full.rows.filter(pc.is_in(full.rows.column("slide_id"), batch))
            (lakehouse.write_table if start == 0 else lakehouse.append)("training_pairs", rows)
        full_seconds = since(started)
        pairs = full.rows.num_rows
        del full
        print(
            f"== full rebuild of training_pairs: {pairs:,} pairs "
            f"({pairs / args.slides:.0f}/slide) {fmt(full_seconds)}"
        )

        slide = written[len(written) // 2]
        started = clock()
        one = build_model(lakehouse, model, partition_key=slide, run_id="rehearsal-one")
        write_model(lakehouse, model, one, partition_key=slide)
        one_seconds = since(started)
        print(
            f"== incremental one-slide rebuild: {fmt(one_seconds)}; "
            f"full / one-slide = {full_seconds[0] / one_seconds[0]:.0f}x wall"
        )

        # -- orchestration overhead --------------------------------------------------------
        asset = next(a for a in sql_model_assets if a.key.to_user_string() == "training_pairs")
        direct, step, run = [], [], []
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        for _ in range(args.repeats):
            started = time.perf_counter()
            build = build_model(lakehouse, model, partition_key=slide, run_id="direct")
            write_model(lakehouse, model, build, partition_key=slide)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = dg.materialize(
                [asset],
                partition_key=slide,
                instance=instance,
                resources={"lakehouse": lakehouse},
                run_config=quiet,
            )
            run.append(time.perf_counter() - started)
            stats = instance.get_run_step_stats(result.run_id)[0]
            step.append(stats.end_time - stats.start_time)
        d, s, r = statistics.median(direct), statistics.median(step), statistics.median(run)
        print(
            f"== per-slide orchestration (median of {args.repeats}): own compute {d:.2f}s; "
            f"Dagster step {s:.2f}s, overhead {s - d:.2f}s = {100 * (s - d) / s:.0f}% of the "
            f"step; whole in-process run {r:.2f}s, overhead {100 * (r - d) / r:.0f}% of the run"
        )

    # -- queries and files before/after maintenance --------------------------------------
    def queries() -> tuple[float, float]:
        with lakehouse.connect() as connection:
            one_slide = median_of(
                lambda: connection.sql(
                    f"SELECT count(*), avg(clip_tokens) FROM training_pairs WHERE slide_id = {quote(slide)}"
                ).fetchall(),
                args.repeats,
            )
            whole = median_of(
                lambda: connection.sql(
                    "SELECT tissue_site, count(*) FROM training_pairs GROUP BY 1"
                ).fetchall(),
                args.repeats,
            )
        return one_slide, whole

    before = queries()
    started = clock()
    reports = maintain(lakehouse, retention_hours=0)
    maintenance = since(started)
    after = queries()
    print(f"== maintenance (compact, checkpoint, vacuum): {fmt(maintenance)}")
    print(f"   {'table':<22} {'active files':>16} {'stored files':>16} {'rows':>12}")
    for report in reports:
        print(
            f"   {report.table:<22} {report.active_files_before:>7} -> {report.active_files_after:<6}"
            f" {report.stored_files_before:>7} -> {report.stored_files_after:<6} {report.rows_after:>12,}"
        )
    print("== DuckDB over training_pairs (median), before -> after maintenance")
    print(
        f"   one slide:     {before[0] * 1000:8.1f} ms -> {after[0] * 1000:8.1f} ms "
        f"({before[0] / after[0]:.1f}x)"
    )
    print(
        f"   whole dataset: {before[1] * 1000:8.1f} ms -> {after[1] * 1000:8.1f} ms "
        f"({before[1] / after[1]:.1f}x)"
    )
    sys.stdout.flush()
    # deltalake's runtime threads can abort interpreter shutdown (FACTS.md): exit directly.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
