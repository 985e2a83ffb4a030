"""``pathgen demo``: the main job end to end on the embedded defaults, then what it made."""

from __future__ import annotations

import json
import time

import dagster as dg
import polars as pl

from pathgen_dagster.lineage import format_lineage, trace
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.runner import run_slides, run_whole_dataset
from quality.report import quality_report

TILES_SUMMARY = """
SELECT slide_id,
       count(*) AS tiles,
       round(quantile_cont(tissue_fraction, 0.10), 3) AS tissue_p10,
       round(quantile_cont(tissue_fraction, 0.50), 3) AS tissue_p50,
       round(quantile_cont(tissue_fraction, 0.90), 3) AS tissue_p90
FROM tiles GROUP BY slide_id ORDER BY slide_id
"""

PATCHES_SUMMARY = """
SELECT t.slide_id, t.tiles, coalesce(p.selected, 0) AS selected, p.k
FROM (SELECT slide_id, count(*) AS tiles FROM tiles GROUP BY 1) t
LEFT JOIN (SELECT slide_id, count(*) AS selected, max(k) AS k FROM patches GROUP BY 1) p
  USING (slide_id)
ORDER BY slide_id
"""

EXAMPLE_CAPTIONS = """
SELECT c.slide_id, p.x, p.y, c.caption, c.clip_tokens, c.backend, c.model_id, c.template_hash,
       p.reasons, s.sha256[:12] AS slide_sha256
FROM captions c JOIN patches p USING (slide_id, patch_id) JOIN slides s USING (slide_id)
ORDER BY c.slide_id, c.patch_id LIMIT 3
"""

TRAINING_PAIRS_SUMMARY = """
SELECT slide_id, count(*) AS pairs, round(avg(clip_tokens), 1) AS mean_clip_tokens,
       max(clip_tokens) AS max_clip_tokens
FROM training_pairs GROUP BY slide_id ORDER BY slide_id
"""

INSTRUCTIONS_SUMMARY = """
SELECT slide_id, kind, count(*) AS rows, count(*) FILTER (status = 'ok') AS ok,
       count(*) FILTER (status = 'quarantined') AS quarantined
FROM instructions GROUP BY 1, 2 ORDER BY 1, 2
"""


def show(title: str, frame: pl.DataFrame) -> None:
    print(f"\n== {title}")
    with pl.Config(tbl_rows=40, tbl_cols=-1, fmt_str_lengths=100, tbl_width_chars=180):
        print(frame)


def show_instructions(lakehouse: Lakehouse) -> None:
    """Counts of the instruction data and one exported example of each kind."""
    if lakehouse.version("instructions") is None:
        print("\n== instructions: not built")
        return
    show("instructions (PathGen-Instruct) per slide and kind", lakehouse.sql(INSTRUCTIONS_SUMMARY))
    for kind in ("conversation", "multiple_choice"):
        example = lakehouse.sql(
            "SELECT instruction_id, turns_json FROM instructions "
            f"WHERE kind = '{kind}' AND status = 'ok' ORDER BY instruction_id LIMIT 1"
        )
        if len(example):
            print(f"\n== one {kind} ({example['instruction_id'][0]})")
            for turn in json.loads(example["turns_json"][0]):
                print(f"  {turn['from']:>5}: " + turn["value"].replace("\n", "\n         "))


def run_demo(lakehouse: Lakehouse) -> int:
    """Materialize every stage for every registered slide and print the summaries."""
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        slide_ids = instance.get_dynamic_partitions(SLIDES_PARTITION)
        print(f"materializing {len(slide_ids)} slide partitions: {', '.join(slide_ids)}")
        outcomes = run_slides(instance, slide_ids, progress=print)
        print("building the whole-dataset summaries and exports ...")
        whole = run_whole_dataset(instance)
    errors = lakehouse.sql("SELECT slide_id, stage, reason FROM slide_errors ORDER BY slide_id")
    show("files rejected at registration (kept in slide_errors, not registered)", errors)
    show("tiles per slide (DuckDB over Delta)", lakehouse.sql(TILES_SUMMARY))
    show("representative patches per slide (stage A)", lakehouse.sql(PATCHES_SUMMARY))
    show("three captions with their provenance", lakehouse.sql(EXAMPLE_CAPTIONS))
    print()
    print(quality_report(lakehouse))
    show("training_pairs (passed every gate)", lakehouse.sql(TRAINING_PAIRS_SUMMARY))
    show_instructions(lakehouse)
    for event in whole.get_asset_materialization_events():
        metadata = event.step_materialization_data.materialization.metadata
        if "directory" in metadata:
            print(f"export {event.asset_key.to_user_string()}: {metadata['directory'].value}")
    first_pair = lakehouse.sql("SELECT pair_id FROM training_pairs ORDER BY pair_id LIMIT 1")
    if len(first_pair):
        print(f"\n== pathgen lineage {first_pair['pair_id'][0]}")
        print(format_lineage(trace(lakehouse, first_pair["pair_id"][0])))
    failed = [o for o in outcomes if not o.success]
    if not whole.success:
        print("FAILED: the whole-dataset run (summaries, exports); see the Dagster UI")
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
    return 1 if failed or not whole.success else 0
