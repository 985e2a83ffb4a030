"""Benchmark: seconds per 1,000 captions for the caption-quality checks, and GX's share.

Captions come from the grounded agents (verbalize.describe -> revise -> summarize) over
morphology facts drawn around the sample slides' measurements; a share of them is then
broken the ways model captions break (unsupported finding, meta preamble, CLIP overflow,
copies). They are written into a temporary lakehouse as real Delta tables, and each slide
is checked by a real ``dg.materialize`` of ``caption_quality`` with its blocking gate and
its great-expectations check: the whole suite as the code location runs it. In the same
run the pieces are timed alone (text rules, MiniLM embeddings, judging, the GX suite), so
the numbers are ratios of one another on the same machine and load.

Usage: python scripts/bench_quality.py [--captions 1000] [--slides 5] [--bad-share 0.2]
                                      [--torch-threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pyarrow as pa

from assets.caption_quality import caption_quality
from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.quality.fidelity import (
    DEFAULT_CONFIG,
    SlideInputs,
    judge,
    measure_slide,
    pass_rates,
    ruleset_version,
)
from pathgen_dagster.lib.schemas import TABLES
from pathgen_dagster.lib.selection.facts import BANDS, MorphologyFacts
from pathgen_dagster.lib.selection.text_encoder import SentenceEncoder
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.checks import CAPTION_EXPECTATIONS, caption_expectations, caption_fidelity_gate
from quality.expectations import run_suite

# Measurements of a moderately cellular patch of the sample slides; each caption's facts
# scale the band-deciding ones at random so every band occurs.
BASE_MEASUREMENTS = {
    "mpp_um": 0.5, "field_width_um": 336.0, "tissue_fraction": 0.8, "white_fraction": 0.2,
    "eosin_fraction": 0.45, "haematoxylin_fraction": 0.55, "haematoxylin_od_mean": 0.45,
    "haematoxylin_od_std": 0.15, "haematoxylin_od_p10": 0.25, "haematoxylin_od_p50": 0.43,
    "haematoxylin_od_p90": 0.65, "eosin_od_mean": 0.3, "eosin_od_std": 0.08,
    "eosin_od_p10": 0.2, "eosin_od_p50": 0.3, "eosin_od_p90": 0.4, "nuclei_count": 150,
    "nuclei_density_per_mm2": 2000.0, "nuclear_area_mean_um2": 60.0,
    "nuclear_area_std_um2": 55.0, "nuclear_area_cv": 0.6, "nuclear_area_log_sd": 0.5,
    "nuclear_eccentricity_mean": 0.65, "nuclear_haematoxylin_od_mean": 0.7,
    "nuclear_fraction": 0.17, "nc_ratio_proxy": 0.2, "lymphoid_fraction": 0.2,
    "lymphoid_density_per_mm2": 500.0, "gradient_mean": 0.06, "gradient_std": 0.04,
    "orientation_coherence": 0.4, "bandpass_energy_fine": 0.01,
    "bandpass_energy_medium": 0.01, "bandpass_energy_coarse": 0.01,
}  # fmt: skip
SITES = ("lung", "breast", "colon", "skin", "prostate")
CORRUPTIONS = ("unsupported", "meta", "overflow", "copy", "question")


def random_facts(rng: random.Random) -> MorphologyFacts:
    values = dict(BASE_MEASUREMENTS)
    for band in BANDS.values():
        values[band.measure] = values[band.measure] * rng.uniform(0.3, 2.2)
    values["white_fraction"] = min(values["white_fraction"], 0.95)
    values["tissue_fraction"] = 1.0 - values["white_fraction"]
    values["nuclei_count"] = int(values["nuclei_count"] * rng.uniform(0.03, 2.0))
    bands = {name: band.label(values[band.measure]) for name, band in BANDS.items()}
    return MorphologyFacts(**values, **bands)


def corrupt(caption: str, kind: str, other: str) -> str:
    """``caption`` broken the way model captions break."""
    body = caption.rstrip(".")
    if kind == "unsupported":
        return f"{body}, with focal necrosis and marked nuclear pleomorphism."
    if kind == "meta":
        return f"Here is a caption based on the given description: {caption}"
    if kind == "overflow":
        return f"{body}, " + ", ".join(["with scattered small cells between thin fibres"] * 5) + "."
    if kind == "copy":
        return other
    return f"{caption} Would you like more detail about the stroma?"


def fill(table: str, values: dict) -> dict:
    """``values`` plus a plain value of the declared type for every other column."""
    row = {}
    for column in TABLES[table].columns:
        if column.name in values:
            row[column.name] = values[column.name]
        elif pa.types.is_string(column.type):
            row[column.name] = None if column.nullable else "bench"
        elif pa.types.is_integer(column.type):
            row[column.name] = 0
        elif pa.types.is_floating(column.type):
            row[column.name] = 0.0
        elif pa.types.is_boolean(column.type):
            row[column.name] = False
        elif pa.types.is_list(column.type):
            row[column.name] = []
        elif pa.types.is_binary(column.type):
            row[column.name] = b""
        else:
            row[column.name] = datetime.now(UTC)
    return row


def write(lakehouse: Lakehouse, table: str, slide_id: str, rows: list[dict]) -> None:
    frame = pa.Table.from_pylist([fill(table, r) for r in rows], schema=TABLES[table].schema)
    lakehouse.write_slide(table, slide_id, frame)


def build_slides(
    lakehouse: Lakehouse, n_captions: int, n_slides: int, bad_share: float, seed: int
) -> dict[str, SlideInputs]:
    """Write every slide's stage tables; return what the lib-only timings need."""
    rng = random.Random(seed)
    per_slide = -(-n_captions // n_slides)
    inputs: dict[str, SlideInputs] = {}
    made = 0
    for s in range(n_slides):
        slide_id = f"bench-slide-{s}"
        site = SITES[s % len(SITES)]
        rows: dict[str, list[dict]] = {
            "patches": [],
            "descriptions": [],
            "revised": [],
            "captions": [],
        }
        texts: list[str] = []
        facts_by_patch, revisions = {}, {}
        for i in range(min(per_slide, n_captions - made)):
            pid = f"{slide_id}_x{i * 672}_y0_s672"
            facts = random_facts(rng)
            draft = verbalize.describe(facts, tissue_site=site, seed=pid)
            revised, edits = verbalize.revise(draft, facts, seed=pid)
            caption = verbalize.summarize(revised, facts, seed=pid, tissue_site=site)
            if rng.random() < bad_share:
                kind = CORRUPTIONS[i % len(CORRUPTIONS)]
                caption = corrupt(caption, kind, texts[-1] if texts else caption)
            texts.append(caption)
            key = {"patch_id": pid, "slide_id": slide_id}
            facts_json = json.dumps(facts.to_dict())
            rows["patches"].append(key | {"facts_json": facts_json, "tissue_site": site})
            rows["descriptions"].append(key | {"description": draft, "facts_json": facts_json})
            revision = {"draft": draft, "revised": revised, "edits_json": json.dumps(edits)}
            # No image here: the second detector has nothing to measure, and says so.
            unmeasured = Evidence("not-measured", 0, math.nan, "unknown", facts.cellularity)
            rows["revised"].append(
                key | revision | {"n_edits": len(edits), "evidence_json": unmeasured.to_json()}
            )
            rows["captions"].append(key | {"caption": caption, "status": "ok"})
            facts_by_patch[pid], revisions[pid] = facts, revision
        made += len(texts)
        for table, name in (
            ("patches", "patches"),
            ("descriptions", "descriptions"),
            ("revised_descriptions", "revised"),
            ("captions", "captions"),
        ):
            write(lakehouse, table, slide_id, rows[name])
        inputs[slide_id] = SlideInputs(
            captions=[{"patch_id": r["patch_id"], "caption": r["caption"]} for r in rows["captions"]],
            revisions=revisions,
            facts=facts_by_patch,
            tissue_sites=dict.fromkeys(facts_by_patch, site),
        )
    return inputs


@dataclass
class Clock:
    """Wall and CPU (this process, all threads) seconds, accumulated over ``with clock():``.

    CPU seconds stay meaningful on a shared machine, where wall time depends on the load.
    """

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--slides", type=int, default=5)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for MiniLM (default: torch's own choice, one per core)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as root, dg.instance_for_test() as instance:
        lakehouse = Lakehouse(root=os.path.join(root, "lakehouse"))
        inputs = build_slides(lakehouse, args.captions, args.slides, args.bad_share, args.seed)
        n = sum(len(i.captions) for i in inputs.values())

        # Whole suite: caption_quality + blocking gate + GX check, one real run per slide.
        encoders = Encoders(device="cpu")
        encoders.sentences.encode(["warm up"])  # model load is a one-off, not per caption
        instance.add_dynamic_partitions(SLIDES_PARTITION, list(inputs))
        whole = Clock()
        asset_seconds = gx_seconds = 0.0
        blocked = 0
        for slide_id in inputs:
            with whole():
                result = dg.materialize(
                    [caption_quality, caption_fidelity_gate, caption_expectations],
                    partition_key=slide_id,
                    instance=instance,
                    resources={"lakehouse": lakehouse, "encoders": encoders},
                    raise_on_error=False,
                )
            blocked += not result.success
            materialization = result.asset_materializations_for_node("caption_quality")[0]
            asset_seconds += materialization.metadata["seconds"].value
            for evaluation in result.get_asset_check_evaluations():
                if evaluation.check_name == CAPTION_EXPECTATIONS:
                    gx_seconds += evaluation.metadata["gx_seconds"].value

        # The same work, piece by piece, without Dagster or Delta.
        encoder = SentenceEncoder()
        encoder.encode(["warm up"])
        embeddings, measuring, gx_alone = Clock(), Clock(), Clock()

        def timed_encode(texts: list[str]):
            with embeddings():
                return encoder.encode(texts)

        all_results = []
        for slide in inputs.values():
            with measuring():
                measured = measure_slide(slide, encode=timed_encode)
                verdicts = [judge(m) for m in measured.measures]
            all_results += [v.results for v in verdicts]
        rows = lakehouse.read("caption_quality")
        for slide_id in inputs:
            with gx_alone():
                run_suite(
                    rows.filter(pl.col("slide_id") == slide_id),
                    slide_id=slide_id,
                    lakehouse_root=lakehouse.root,
                    config=DEFAULT_CONFIG,
                    ruleset_version=ruleset_version(),
                )

    def line(label: str, wall: float, cpu: float | None) -> None:
        cpu_text = f"{1000 * cpu / n:9.2f}" if cpu is not None else f"{'-':>9s}"
        print(f"{label:58s} {1000 * wall / n:9.2f} {cpu_text} {wall / whole.wall:7.2f}")

    print(
        f"\n{n} captions on {len(inputs)} slides ({blocked} blocked by the gate); load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs, "
        f"torch threads {args.torch_threads or 'default'}"
    )
    print(f"{'seconds per 1,000 captions':58s} {'wall':>9s} {'CPU':>9s} {'/whole':>7s}")
    line("whole check suite (dg.materialize: asset + gate + GX)", whole.wall, whole.cpu)
    line("  caption_quality asset compute (its metadata)", asset_seconds, None)
    line("  great-expectations check (gx_seconds metadata)", gx_seconds, None)
    print("the same pieces alone, without Dagster or Delta:")
    line("  MiniLM embeddings (captions + distinct facts sentences)", embeddings.wall, embeddings.cpu)
    line(
        "  text rules: measure + judge without embeddings",
        measuring.wall - embeddings.wall,
        measuring.cpu - embeddings.cpu,
    )
    line("  great-expectations suite", gx_alone.wall, gx_alone.cpu)
    print(f"\npass rate per rule (bad share {args.bad_share:.0%}):")
    for name, rate in pass_rates(all_results).items():
        print(f"  {name:28s} {rate:6.1%}")


if __name__ == "__main__":
    main()
