"""Benchmark helper: the tables upstream of ``training_pairs`` at PathGen-1.6M scale.

Writes ``slides``, ``tiles``, ``patches``, ``descriptions``, ``revised_descriptions``,
``captions`` and ``caption_quality`` with their declared schemas and synthetic values:
~7,000 slides, a few hundred checked captions each, ~90 % passing, so that building
``training_pairs`` from them gives ~1.6M rows. Everything goes through the lakehouse's
schema-checked writer, partitioned per slide like the real tables (one file per slide and
table). Patch images are empty (no JPEG bytes) and caption embeddings empty lists: they would
cost tens of GB and no benchmarked query reads them.

Usage: python scripts/generate_training_data.py LAKEHOUSE_ROOT [--slides N] [--pairs P]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa

from pathgen_dagster.lib.delta import conform
from pathgen_dagster.lib.schemas import TABLES, TableSpec
from pathgen_dagster.resources.lakehouse import Lakehouse

SITES = (
    "lung adenocarcinoma",
    "breast invasive carcinoma",
    "colon adenocarcinoma",
    "kidney clear cell carcinoma",
    "prostate adenocarcinoma",
    "skin melanoma",
    "liver hepatocellular carcinoma",
    "stomach adenocarcinoma",
)
PHRASES = (
    "sheets of atypical epithelial cells",
    "glandular structures with irregular lumens",
    "hyperchromatic nuclei with coarse chromatin",
    "a raised nuclear to cytoplasmic ratio",
    "dense fibrous stroma between the nests",
    "scattered lymphocytes in the stroma",
    "areas of necrosis with nuclear debris",
    "mitotic figures are readily found",
    "lepidic growth along alveolar walls",
    "micropapillary tufts without fibrovascular cores",
    "clear cytoplasm and distinct cell borders",
    "a delicate capillary network",
    "pleomorphic nuclei with prominent nucleoli",
    "cribriform architecture within the glands",
    "desmoplastic reaction around infiltrating cells",
    "pigment-laden cells at the junction",
    "trabecular plates of polygonal cells",
    "signet ring cells in the lamina propria",
    "moderate cellularity with preserved architecture",
    "hemorrhage in the surrounding tissue",
    "mucin pools with floating cell clusters",
    "keratin pearls within the nests",
    "perineural invasion by tumour cells",
    "a thin fibrous capsule at the edge",
)
RULES = ("clip_length", "unsupported_claim", "contradiction", "duplicate", "alignment")
BATCH_SLIDES = 1000


def slide_ids(count: int) -> list[str]:
    """Synthetic TCGA-like slide ids (valid partition keys)."""
    return [f"TCGA-SYN-{index:05d}-01Z-00-DX1" for index in range(count)]


def _texts(rng: np.random.Generator, n: int, words: int, prefix: pl.Series | None = None):
    phrases = pl.Series(PHRASES)
    parts = [phrases.gather(rng.integers(0, len(PHRASES), n)) for _ in range(words)]
    if prefix is not None:
        parts.insert(0, prefix)
    return pl.DataFrame({f"p{i}": part for i, part in enumerate(parts)}).select(
        pl.concat_str(pl.all(), separator=", ")
    )[:, 0]


def _complete(spec: TableSpec, columns: dict[str, object], n: int) -> pa.Table:
    """The table with ``columns`` and a constant of the right type in every other column."""
    arrays = []
    for column in spec.columns:
        if column.name in columns:
            value = columns[column.name]
            if isinstance(value, pl.Series):
                value = value.to_arrow()
            arrays.append(value if isinstance(value, pa.Array) else pa.array(value))
            continue
        if pa.types.is_string(column.type):
            constant = pa.scalar(f"{column.name}-synthetic", column.type)
        elif pa.types.is_integer(column.type):
            constant = pa.scalar(0, column.type)
        elif pa.types.is_floating(column.type):
            constant = pa.scalar(0.0, column.type)
        elif pa.types.is_boolean(column.type):
            constant = pa.scalar(False)
        elif pa.types.is_list(column.type):
            constant = pa.scalar([], column.type)
        elif pa.types.is_binary(column.type):
            constant = pa.scalar(b"", column.type)
        elif pa.types.is_timestamp(column.type):
            constant = pa.scalar(0, column.type)
        else:
            raise TypeError(f"{spec.name}.{column.name}: no synthetic value for {column.type}")
        arrays.append(pa.repeat(constant, n))
    return conform(spec, pa.Table.from_arrays(arrays, names=spec.column_names))


def _const(value: object, n: int) -> pa.Array:
    """``value`` repeated ``n`` times, without building a Python list."""
    return pa.repeat(pa.scalar(value), n)


def _one_if_failed(passed: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list per row: empty where ``passed``, else ``[values[i]]``."""
    offsets = np.concatenate([[0], np.cumsum(~passed)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[~passed].tolist()))


def _agent(stage: str, model: str, n: int) -> dict[str, object]:
    return {
        "backend": _const("vllm", n),
        "model_id": _const(model, n),
        "template_id": _const(f"{stage}-v3", n),
        "template_hash": _const(hashlib.sha256(stage.encode()).hexdigest()[:16], n),
        "sampling_json": _const(json.dumps({"temperature": 0.2, "top_p": 0.9, "seed": 7}), n),
        "status": _const("ok", n),
        "run_id": _const(f"run-{stage}-0001", n),
        "config_hash": _const(f"cfg-{stage}", n),
    }


def batch_tables(
    ids: list[str], first_index: int, *, mean_patches: int, pass_rate: float, seed: int
) -> dict[str, pa.Table]:
    """Every upstream table's rows for a batch of slides."""
    rng = np.random.default_rng(seed + first_index)
    counts = rng.integers(int(mean_patches * 0.8), int(mean_patches * 1.2) + 1, len(ids))
    n = int(counts.sum())
    slide_of = np.repeat(np.arange(len(ids)), counts)
    ordinal = np.concatenate([np.arange(c) for c in counts])
    sites = np.array(SITES)[(first_index + np.arange(len(ids))) % len(SITES)]
    slide_series = pl.Series(ids).gather(slide_of)
    x = (ordinal % 60) * 672
    y = (ordinal // 60) * 672
    patch_ids = pl.DataFrame({"s": slide_series, "x": x, "y": y}).select(
        pl.format("{}_x{}_y{}_s672", "s", "x", "y")
    )[:, 0]
    key = {"patch_id": patch_ids, "slide_id": slide_series}
    site_series = pl.Series(sites).gather(slide_of)
    tables: dict[str, pa.Table] = {}
    m = len(ids)
    tables["slides"] = _complete(
        TABLES["slides"],
        {
            "slide_id": ids,
            "uri": [f"/data/tcga/{s}.svs" for s in ids],
            "file_name": [f"{s}.svs" for s in ids],
            "vendor": ["aperio"] * m,
            "mpp_x": [0.2527] * m,
            "mpp_y": [0.2527] * m,
            "objective_power": [40.0] * m,
            "level_count": pa.array([4] * m, pa.int32()),
            "width": [40320] * m,
            "height": [40320] * m,
            "sha256": [hashlib.sha256(s.encode()).hexdigest() for s in ids],
            "tissue_site": sites.tolist(),
            "run_id": ["run-slides-0001"] * m,
        },
        m,
    )
    tables["tiles"] = _complete(
        TABLES["tiles"],
        {
            "tile_id": patch_ids,
            "slide_id": slide_series,
            "x": x,
            "y": y,
            "size_px": pa.array(np.full(n, 672, np.int32)),
            "mpp": np.full(n, 0.2527),
            "tissue_fraction": rng.uniform(0.5, 1.0, n),
            "run_id": _const("run-tiles-0001", n),
        },
        n,
    )
    descriptions = _texts(rng, n, 8)
    revised = _texts(rng, n, 7)
    captions = _texts(rng, n, 3, prefix=site_series)
    tokens = rng.integers(30, 78, n).astype(np.int32)
    tables["patches"] = _complete(
        TABLES["patches"],
        {
            **key,
            "x": x,
            "y": y,
            "size_px": pa.array(np.full(n, 672, np.int32)),
            "mpp": np.full(n, 0.2527),
            "reasons": pa.array(
                [["attribute"], ["attribute", "cluster"], ["cluster"]] * (n // 3)
                + [["report"]] * (n % 3),
                pa.list_(pa.string()),
            ),
            "attribute_score": rng.uniform(15, 35, n),
            "top_prompt": _texts(rng, n, 1),
            "cluster_id": pa.array(rng.integers(0, 12, n).astype(np.int32)),
            "tissue_site": site_series,
            "prompt_library_version": _const("3f2a9c1b7d4e", n),
            "encoder_id": _const("open_clip:ViT-B-16", n),
            "text_encoder_id": _const("all-MiniLM-L6-v2", n),
            "selection_config": _const(json.dumps({"top_k": 64, "max_patches": 256}), n),
            "image_sha256": pl.Series(patch_ids).map_elements(
                lambda v: hashlib.sha256(v.encode()).hexdigest(), return_dtype=pl.String
            ),
            "run_id": _const("run-patches-0001", n),
        },
        n,
    )
    tables["descriptions"] = _complete(
        TABLES["descriptions"],
        {**key, **_agent("description", "pathgen-llava-13b", n), "description": descriptions},
        n,
    )
    tables["revised_descriptions"] = _complete(
        TABLES["revised_descriptions"],
        {
            **key,
            **_agent("revision", "pathgen-revise-13b", n),
            "draft": descriptions,
            "revised": revised,
        },
        n,
    )
    tables["captions"] = _complete(
        TABLES["captions"],
        {
            **key,
            **_agent("summary", "pathgen-summary-7b", n),
            "caption": captions,
            "clip_tokens": pa.array(tokens),
            "fits_clip": pa.array(tokens <= 77),
        },
        n,
    )
    passed = rng.random(n) < pass_rate
    failed_rule = np.array(RULES)[rng.integers(0, len(RULES), n)]
    failed_rules = _one_if_failed(passed, failed_rule)
    quality_columns = {
        **key,
        "caption": captions,
        "clip_tokens": pa.array(tokens),
        "failed_rules": failed_rules,
        "severe_failure": pa.array(~passed & (failed_rule == "contradiction")),
        "quality_score": np.where(passed, 1.0, 0.8),
        "alignment_score": rng.uniform(0.2, 0.6, n),
        "passed": pa.array(passed),
        "ruleset_version": _const("rules-v1", n),
        "rule_results_json": _const("{}", n),
        "run_id": _const("run-quality-0001", n),
    }
    if "failure_reasons" in TABLES["caption_quality"].column_names:
        quality_columns["failure_reasons"] = _one_if_failed(
            passed, np.char.add(failed_rule, ": synthetic")
        )
    tables["caption_quality"] = _complete(TABLES["caption_quality"], quality_columns, n)
    return tables


def generate(
    lakehouse: Lakehouse,
    *,
    slides: int = 7000,
    mean_patches: int = 254,
    pass_rate: float = 0.9,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> list[str]:
    """Write every upstream table for ``slides`` synthetic slides; return their ids."""
    ids = slide_ids(slides)
    for start in range(0, slides, BATCH_SLIDES):
        started = time.perf_counter()
        batch = ids[start : start + BATCH_SLIDES]
        tables = batch_tables(
            batch, start, mean_patches=mean_patches, pass_rate=pass_rate, seed=seed
        )
        for name, table in tables.items():
            lakehouse.append(name, table)
        rows = tables["caption_quality"].num_rows
        progress(
            f"  slides {start:>5}-{start + len(batch) - 1:>5}: {rows:,} checked captions "
            f"({time.perf_counter() - started:.1f}s)"
        )
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="lakehouse folder to write (must not hold these tables)")
    parser.add_argument("--slides", type=int, default=7000)
    parser.add_argument("--patches", type=int, default=254, help="mean checked patches/slide")
    args = parser.parse_args()
    generate(Lakehouse(root=args.root), slides=args.slides, mean_patches=args.patches)


if __name__ == "__main__":
    main()
