"""``pathgen demo``: the main job end to end on the embedded defaults, then what it made."""

from __future__ import annotations

import time

import dagster as dg
import polars as pl

from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.runner import run_slides

TILES_SUMMARY = """
SELECT slide_id,
       count(*) AS tiles,
       round(quantile_cont(tissue_fraction, 0.10), 3) AS tissue_p10,
       round(quantile_cont(tissue_fraction, 0.50), 3) AS tissue_p50,
       round(quantile_cont(tissue_fraction, 0.90), 3) AS tissue_p90
FROM tiles GROUP BY slide_id ORDER BY slide_id
"""


def show(title: str, frame: pl.DataFrame) -> None:
    print(f"\n== {title}")
    with pl.Config(tbl_rows=40, tbl_cols=-1, fmt_str_lengths=100, tbl_width_chars=180):
        print(frame)


def run_demo(lakehouse: Lakehouse) -> int:
    """Materialize every stage for every registered slide and print the summaries."""
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        slide_ids = instance.get_dynamic_partitions(SLIDES_PARTITION)
        print(f"materializing {len(slide_ids)} slide partitions: {', '.join(slide_ids)}")
        outcomes = run_slides(instance, slide_ids, progress=print)
    errors = lakehouse.sql("SELECT slide_id, stage, reason FROM slide_errors ORDER BY slide_id")
    show("files rejected at registration (kept in slide_errors, not registered)", errors)
    show("tiles per slide (DuckDB over Delta)", lakehouse.sql(TILES_SUMMARY))
    failed = [o for o in outcomes if not o.success]
    print(
        f"\n{len(outcomes) - len(failed)}/{len(outcomes)} slides succeeded in "
        f"{time.perf_counter() - started:.1f}s"
    )
    for outcome in failed:
        print(f"FAILED {outcome.slide_id}: {outcome.error}")
    print(
        "\nNext: `make ui` and open http://127.0.0.1:3000 (asset graph, partitions, checks);"
        '\n      `.venv/bin/pathgen sql "SELECT * FROM tiles LIMIT 5"` for SQL over every table.'
    )
    return 1 if failed else 0
