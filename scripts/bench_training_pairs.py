"""Benchmark: DuckDB over a 1.6M-row ``training_pairs`` and incremental vs full rebuilds.

Generates the upstream tables at PathGen-1.6M scale (scripts/generate_training_data.py),
builds ``training_pairs`` from them with the SQL model (a full rebuild), then times, each
against a baseline measured in the same run:

- count by tissue site; a term filter on captions;
- one slide's rows with partition pruning vs the same rows through a full scan;
- one pair's lineage: the pair lookup pruned by the slide its id names vs a full scan, and
  the whole seven-stage trace;
- rebuilding training_pairs after one slide's captions change (one partition) vs a full
  rebuild.

Usage: python scripts/bench_training_pairs.py [--root build/bench_training_pairs]
       [--slides 7000] [--patches 254] [--repeats 3] [--reuse]
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generate_training_data import generate  # noqa: E402

from assets.sql_models import build_model, write_model  # noqa: E402
from pathgen_dagster.lib.dataset.sql_models import discover, quote  # noqa: E402
from pathgen_dagster.lineage import trace  # noqa: E402
from pathgen_dagster.resources.lakehouse import Lakehouse  # noqa: E402

UPSTREAM = (
    "slides",
    "tiles",
    "patches",
    "descriptions",
    "revised_descriptions",
    "captions",
    "caption_quality",
)


def timed(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def files_read(connection, query: str) -> str:
    """Parquet files DuckDB opened for ``query`` (per scan), from EXPLAIN ANALYZE."""
    plan = "\n".join(row[1] for row in connection.sql(f"EXPLAIN ANALYZE {query}").fetchall())
    counts = re.findall(r"Total Files Read: (\d+)", plan)
    return ", ".join(counts) or "n/a"


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="build/bench_training_pairs")
    parser.add_argument("--slides", type=int, default=7000)
    parser.add_argument("--patches", type=int, default=254, help="mean checked patches/slide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep generated upstream tables")
    parser.add_argument("--duckdb-memory", default="3GB", help="DuckDB memory limit of the full rebuild")
    parser.add_argument("--write-batch-slides", type=int, default=1000, help="slides per full-rebuild commit")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    lakehouse = Lakehouse(root=str(root))
    model = next(m for m in discover() if m.name == "training_pairs")

    print(f"== lakehouse {root}")
    if args.reuse and all(lakehouse.version(t) is not None for t in UPSTREAM):
        print("   reusing the generated upstream tables")
        generate_seconds = None
    else:
        shutil.rmtree(root, ignore_errors=True)
        print(f"== generating upstream tables: {args.slides:,} slides")
        started = time.perf_counter()
        generate(lakehouse, slides=args.slides, mean_patches=args.patches)
        generate_seconds = time.perf_counter() - started
        print(f"   generated in {generate_seconds:.1f}s")

    print("== full rebuild of training_pairs (every slide in one query)")
    started = time.perf_counter()
    full = build_model(
        lakehouse, model, partition_key=None, run_id="bench-full", memory_limit=args.duckdb_memory
    )
    query_seconds = time.perf_counter() - started
    pairs = full.rows.num_rows
    slide_ids = sorted(pc.unique(full.rows.column("slide_id")).to_pylist())
    # One write of 1.6M rows into 7,000 partitions took ~5 GiB above its input (delta-rs
    # buffers every partition); batches of slides keep the peak low on a shared machine.
    # The first batch replaces the table, the rest append: readers see a partial table until
    # the last commit, acceptable for a rebuild from scratch.
    for start in range(0, len(slide_ids), args.write_batch_slides):
        batch = slide_ids[start : start + args.write_batch_slides]
        rows = full.rows.filter(pc.is_in(full.rows.column("slide_id"), pa.array(batch)))
        if start == 0:
            lakehouse.write_table("training_pairs", rows)
        else:
            lakehouse.append("training_pairs", rows)
    full_seconds = time.perf_counter() - started
    del full, rows
    print(
        f"   {pairs:,} pairs from {len(slide_ids):,} slides in {full_seconds:.1f}s "
        f"(query {query_seconds:.1f}s, write {full_seconds - query_seconds:.1f}s)"
    )
    for table in (*UPSTREAM, "training_pairs"):
        print(f"   {table:<22} {size_of(root / table) / 2**20:>8.1f} MiB")

    slide = slide_ids[len(slide_ids) // 2]
    results: list[tuple[str, float, str]] = []
    with lakehouse.connect() as connection:

        def answer(query: str):
            return lambda: connection.sql(query).fetchall()

        by_site = "SELECT tissue_site, count(*) FROM training_pairs GROUP BY 1 ORDER BY 2 DESC"
        seconds, rows = timed(answer(by_site), args.repeats)
        results.append(("count by tissue site", seconds, f"{len(rows)} sites"))

        term = "SELECT count(*) FROM training_pairs WHERE caption ILIKE '%necrosis%'"
        seconds, rows = timed(answer(term), args.repeats)
        results.append(("captions containing 'necrosis'", seconds, f"{rows[0][0]:,} pairs"))

        one = f"SELECT * FROM training_pairs WHERE slide_id = {quote(slide)}"
        # The same rows, but the predicate is an expression DuckDB cannot push into the
        # Delta file list: every file is opened.
        scan = f"SELECT * FROM training_pairs WHERE slide_id || '' = {quote(slide)}"
        pruned_seconds, rows = timed(answer(one), args.repeats)
        scan_seconds, scanned = timed(answer(scan), args.repeats)
        assert len(rows) == len(scanned)
        results.append(
            (
                "one slide, pruned",
                pruned_seconds,
                f"{len(rows)} rows, files {files_read(connection, one)}",
            )
        )
        table_files = len(DeltaTable(lakehouse.uri("training_pairs")).file_uris())
        results.append(("one slide, full scan", scan_seconds, f"files {table_files} (all)"))

        pair_id = rows[len(rows) // 2][0]
        pair_pruned = (
            f"SELECT * FROM training_pairs WHERE slide_id = {quote(slide)} AND pair_id = {quote(pair_id)}"
        )
        pair_scan = f"SELECT * FROM training_pairs WHERE pair_id = {quote(pair_id)}"
        lookup_seconds, _ = timed(answer(pair_pruned), args.repeats)
        lookup_scan_seconds, _ = timed(answer(pair_scan), args.repeats)
        results.append(("pair lookup, pruned", lookup_seconds, pair_id))
        results.append(("pair lookup, full scan", lookup_scan_seconds, ""))
    lineage_seconds, lineage = timed(lambda: trace(lakehouse, pair_id), args.repeats)
    found = sum(step.row is not None for step in lineage.steps)
    results.append(("pathgen lineage (7 stages)", lineage_seconds, f"{found}/7 stage rows found"))

    # Every query first replays the table's Delta log (7,000 add actions with stats in JSON
    # here); a checkpoint stores the same state as one Parquet file.
    for table in (*UPSTREAM, "training_pairs"):
        DeltaTable(lakehouse.uri(table)).create_checkpoint()
    with lakehouse.connect() as connection:
        checkpoint_seconds, _ = timed(lambda: connection.sql(one).fetchall(), args.repeats)
    results.append(("one slide, pruned, checkpointed", checkpoint_seconds, ""))
    lineage_checkpoint, _ = timed(lambda: trace(lakehouse, pair_id), args.repeats)
    results.append(("pathgen lineage, checkpointed", lineage_checkpoint, ""))

    print(f"== queries (median of {args.repeats}) over {pairs:,} pairs")
    for name, seconds, note in results:
        print(f"   {name:<32} {seconds * 1000:>9.1f} ms   {note}")

    print(f"== rebuild after slide {slide} changes")
    # The slide's captions are rewritten and re-checked (not timed): then only its partition
    # of training_pairs is rebuilt, as the per-slide Dagster asset does.
    for table in ("captions", "caption_quality"):
        frame = lakehouse.read(table, slide_id=slide)
        lakehouse.write_slide(table, slide, frame.with_columns(frame["caption"] + " (rewritten)"))
    started = time.perf_counter()
    one_build = build_model(lakehouse, model, partition_key=slide, run_id="bench-one-slide")
    query_seconds = one_build.query_seconds
    write_model(lakehouse, model, one_build, partition_key=slide)
    one_seconds = time.perf_counter() - started
    changed = lakehouse.sql(
        "SELECT slide_id, count(*) AS n FROM training_pairs WHERE run_id = 'bench-one-slide' GROUP BY 1"
    )
    assert changed["slide_id"].to_list() == [slide], changed
    print(
        f"   one slide: {one_build.rows.num_rows} rows in {one_seconds:.2f}s "
        f"(query {query_seconds:.2f}s, write {one_seconds - query_seconds:.2f}s)"
    )
    print(f"   full rebuild: {pairs:,} rows in {full_seconds:.1f}s")

    print("== ratios")
    print(f"   one slide: full scan / pruned         {scan_seconds / pruned_seconds:8.1f}x")
    print(f"   pair lookup: full scan / pruned       {lookup_scan_seconds / lookup_seconds:8.1f}x")
    print(f"   rebuild: full / one slide             {full_seconds / one_seconds:8.1f}x")
    print(f"   lineage: no checkpoint / checkpoint   {lineage_seconds / lineage_checkpoint:8.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"   peak memory {peak:.1f} GiB"
        + (f"; generation {generate_seconds:.0f}s" if generate_seconds else "")
    )


if __name__ == "__main__":
    main()
