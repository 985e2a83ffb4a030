"""``dataset_duplicates``: the whole-dataset step that removes near-duplicate images.

Unpartitioned, so it runs once over every slide's ``training_pairs`` (``pathgen export``, or
a backfill of the ``training_data`` group), after the per-slide assets: each slide's own
stages never read another slide (their verdicts cannot depend on commit order), and this
step costs the dataset one indexed pass instead of every slide a scan of all the others
(``scripts/bench_dataset_duplicates.py``). The exports leave out the pairs it removes;
``training_pairs`` keeps them, so a pair's lineage is unchanged.
"""

import hashlib
import json
import time
from dataclasses import asdict

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from assets.coverage import coverage_spec, slide_coverage
from pathgen_dagster.lib.dataset.duplicates import (
    DEFAULT_INDEX,
    near_duplicate_images,
    repeated_captions,
)
from pathgen_dagster.lib.dataset.sql_models import quote
from pathgen_dagster.lib.quality.fidelity import caption_key
from pathgen_dagster.lib.schemas import DATASET_DUPLICATES, PATCH_EMBEDDINGS, TRAINING_PAIRS
from pathgen_dagster.metadata import column_schema, preview
from pathgen_dagster.resources.lakehouse import Lakehouse

CONFIG_HASH = hashlib.sha256(
    json.dumps({"rule": "greedy-lowest-pair-id-v1", **asdict(DEFAULT_INDEX)}).encode()
).hexdigest()[:16]


def read_pairs(lakehouse: Lakehouse, versions: dict[str, int]) -> pa.Table:
    """Every training pair with its image embedding and near-duplicate threshold."""
    tp, pe = (
        f"delta_scan({quote(lakehouse.uri(t))}, version => {versions[t]})"
        for t in (TRAINING_PAIRS.name, PATCH_EMBEDDINGS.name)
    )
    with lakehouse.connect(views=False) as connection:
        return connection.sql(
            f"""
            SELECT t.pair_id, t.slide_id, t.caption, t.image_encoder_id,
                   CAST(json_extract(t.selection_config, '$.dedup_threshold') AS DOUBLE)
                       AS threshold,
                   e.embedding
            FROM {tp} AS t
            JOIN {pe} AS e ON e.slide_id = t.slide_id AND e.tile_id = t.patch_id
            """
        ).to_arrow_table()


def find_duplicates(pairs: pa.Table) -> list[dict]:
    """Rows of ``dataset_duplicates`` for ``pairs`` (see :func:`read_pairs`)."""
    slide_of = dict(zip(pairs["pair_id"].to_pylist(), pairs["slide_id"].to_pylist(), strict=True))
    rows: list[dict] = []
    removed: set[str] = set()
    for encoder in sorted(set(pairs["image_encoder_id"].to_pylist())):
        group = pairs.filter(pc.equal(pairs["image_encoder_id"], encoder))
        thresholds = sorted(set(group["threshold"].to_pylist()))
        if len(thresholds) != 1 or thresholds[0] is None:
            raise ValueError(
                f"encoder {encoder!r}: training pairs were selected with near-duplicate "
                f"thresholds {thresholds}; one encoder needs one threshold. Fix: re-materialize "
                "patches (and what follows) for the slides with the odd threshold"
            )
        embeddings = group["embedding"].combine_chunks()
        x = embeddings.flatten().to_numpy(zero_copy_only=False).reshape(len(group), -1)
        found = near_duplicate_images(group["pair_id"].to_pylist(), x, thresholds[0])
        removed.update(d.pair_id for d in found)
        rows += [
            {"kind": "image", "action": "removed", "threshold": thresholds[0],
             "image_encoder_id": encoder, **asdict(d)}
            for d in found
        ]
    kept = [(pid, caption_key(text)) for pid, text in zip(
        pairs["pair_id"].to_pylist(), pairs["caption"].to_pylist(), strict=True
    ) if pid not in removed]
    rows += [
        {"kind": "caption", "action": "reported", "threshold": None, "image_encoder_id": None, **asdict(d)}
        for d in repeated_captions([p for p, _ in kept], [k for _, k in kept])
    ]
    for row in rows:
        row["slide_id"], row["duplicate_slide_id"] = slide_of[row["pair_id"]], slide_of[row["duplicate_of"]]
    return rows


@dg.asset(
    name=DATASET_DUPLICATES.name,
    deps=[TRAINING_PAIRS.name, PATCH_EMBEDDINGS.name],
    group_name="training_data",
    kinds={"python", "delta"},
    description=DATASET_DUPLICATES.doc,
    code_version=CONFIG_HASH,
    metadata={"dagster/column_schema": column_schema(DATASET_DUPLICATES)},
    check_specs=[coverage_spec(DATASET_DUPLICATES.name)],
)
def dataset_duplicates(context: dg.AssetExecutionContext, lakehouse: Lakehouse) -> dg.MaterializeResult:
    versions = {}
    for table in (TRAINING_PAIRS.name, PATCH_EMBEDDINGS.name):
        version = lakehouse.version(table)
        if version is None:
            raise dg.Failure(
                f"stage {DATASET_DUPLICATES.name}: table {table!r} has never been written; "
                f"materialize {table!r} for the slides first"
            )
        versions[table] = version
    started = time.perf_counter()
    pairs = read_pairs(lakehouse, versions)
    try:
        rows = find_duplicates(pairs)
    except ValueError as error:
        raise dg.Failure(f"stage {DATASET_DUPLICATES.name}: {error}") from None
    frame = pl.DataFrame(
        rows,
        schema={
            "pair_id": pl.String, "slide_id": pl.String, "kind": pl.String, "action": pl.String,
            "duplicate_of": pl.String, "duplicate_slide_id": pl.String, "similarity": pl.Float64,
            "threshold": pl.Float64, "image_encoder_id": pl.String,
        },
    ).with_columns(
        training_pairs_version=pl.lit(versions[TRAINING_PAIRS.name], dtype=pl.Int64),
        patch_embeddings_version=pl.lit(versions[PATCH_EMBEDDINGS.name], dtype=pl.Int64),
        run_id=pl.lit(context.run_id),
        config_hash=pl.lit(CONFIG_HASH),
    ).select(DATASET_DUPLICATES.column_names).sort("kind", "pair_id")
    seconds = time.perf_counter() - started
    version = lakehouse.write_table(DATASET_DUPLICATES.name, frame)
    images = frame.filter(pl.col("kind") == "image")
    captions = frame.filter(pl.col("kind") == "caption")
    coverage, coverage_check = slide_coverage(context.instance, DATASET_DUPLICATES.name)
    return dg.MaterializeResult(
        check_results=[coverage_check],
        metadata={
            **coverage,
            "dagster/row_count": len(frame),
            "delta_version": version,
            "pairs_read": pairs.num_rows,
            "images_removed": len(images),
            "cross_slide_images_removed": int((images["slide_id"] != images["duplicate_slide_id"]).sum()),
            "pairs_kept": pairs.num_rows - len(images),
            "repeated_captions_reported": len(captions),
            "distinct_captions_kept": pairs.num_rows - len(images) - len(captions),
            **{f"{table}_version": v for table, v in versions.items()},
            "seconds": round(seconds, 2),
            "preview": preview(frame, ["pair_id", "kind", "action", "duplicate_of", "similarity"]),
        }
    )
