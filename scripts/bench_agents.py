"""Benchmark the caption agents and decide the default backend by measurement.

For each backend (grounded, embedded SmolLM2, and vLLM when PATHGEN_VLLM_URL is set) the
three agents and the caption-quality stage run on the same patches in a private copy of the
lakehouse; the script prints the share of captions that pass every quality gate, time per
slide, captions per minute, tokens per second, and how many requests a re-run saved through
the response cache. The embedded backend also runs with one request at a time and with the
configured concurrency, in the same run. The default backend is the one whose own captions
(not fallback text) pass the gates most often.

Usage: python scripts/bench_agents.py [--lakehouse lakehouse] [--slide ID ...]
(needs a lakehouse in which `patches` is materialized, e.g. after `make demo`)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from assets.caption_quality import caption_quality
from assets.captions import captions, descriptions, revised_descriptions
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer

AGENT_ASSETS = [descriptions, revised_descriptions, captions]
STAGE_TABLES = (
    "descriptions",
    "revised_descriptions",
    "captions",
    "llm_responses",
    "caption_quality",
)


def fresh_copy(source: Path, target: Path) -> Lakehouse:
    shutil.copytree(source, target)
    for table in STAGE_TABLES:
        shutil.rmtree(target / table, ignore_errors=True)
    return Lakehouse(root=str(target))


def run(llm: LLMServer, lakehouse: Lakehouse, slides: list[str], assets: list, instance) -> dict:
    config = {"config": {"max_failure_rate": 1.0}}
    run_config = {"ops": {a.key.path[-1]: config for a in AGENT_ASSETS}}
    resources = {"lakehouse": lakehouse, "llm": llm, "encoders": Encoders()}
    totals = {
        "seconds": 0.0,
        "requests": 0,
        "cache_hits": 0,
        "completion_tokens": 0,
        "fallbacks": 0,
    }
    for slide in slides:
        started = time.perf_counter()
        result = dg.materialize(
            assets,
            partition_key=slide,
            instance=instance,
            resources=resources,
            run_config=run_config,
            raise_on_error=False,
        )
        totals["seconds"] += time.perf_counter() - started
        for event in result.get_asset_materialization_events():
            metadata = event.step_materialization_data.materialization.metadata
            for key, total in (
                ("requests_sent", "requests"),
                ("cache_hits", "cache_hits"),
                ("completion_tokens", "completion_tokens"),
                ("fallbacks", "fallbacks"),
            ):
                if key in metadata:
                    totals[total] += metadata[key].value
    return totals


def pass_rates(lakehouse: Lakehouse) -> tuple[float, float, int]:
    """Share of captions passing every gate, and share passing that the backend wrote itself
    (a rejected model answer replaced by grounded text passes, but is not the model's)."""
    rows = lakehouse.sql(
        "SELECT q.passed, c.status FROM caption_quality q JOIN captions c USING (slide_id, patch_id)"
    )
    if not len(rows):
        return 0.0, 0.0, 0
    own = rows["passed"] & (rows["status"] == "ok")
    return float(rows["passed"].mean()), float(own.mean()), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lakehouse", default="lakehouse")
    parser.add_argument("--slide", action="append", help="slide ids (default: the small ones)")
    args = parser.parse_args()
    source = Path(args.lakehouse)
    slides = args.slide or ["CMU-1-Small-Region", "synthetic-aperio-20x"]
    backends = {
        "grounded": LLMServer(backend="grounded"),
        "embedded": LLMServer(backend="embedded", embedded_parallel=4, max_concurrency=4),
        "embedded-sequential": LLMServer(backend="embedded", embedded_parallel=1, max_concurrency=1),
    }
    if os.environ.get("PATHGEN_VLLM_URL"):
        backends["vllm"] = LLMServer(
            backend="vllm",
            base_url=os.environ["PATHGEN_VLLM_URL"],
            model=os.environ.get("PATHGEN_VLLM_MODEL", "gemma-3-270m"),
            stop=["\nUser:"],
            max_concurrency=8,
        )
    rows = []
    with tempfile.TemporaryDirectory() as scratch, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("slides", slides)
        for name, llm in backends.items():
            lakehouse = fresh_copy(source, Path(scratch) / name)
            first = run(llm, lakehouse, slides, [*AGENT_ASSETS, caption_quality], instance)
            rate, own_rate, n = pass_rates(lakehouse)
            again = run(llm, lakehouse, slides, AGENT_ASSETS, instance)
            rows.append((name, n, rate, own_rate, first, again))
    print(f"slides: {', '.join(slides)}")
    header = (
        f"{'backend':<20} {'captions':>8} {'pass rate':>9} {'own text':>8} {'s/slide':>8} "
        f"{'captions/min':>12} "
        f"{'tokens/s':>9} {'fallbacks':>9} {'requests':>8} {'re-run requests':>15} {'cache hits':>10}"
    )
    print(header)
    for name, n, rate, own_rate, first, again in rows:
        minutes = first["seconds"] / 60
        print(
            f"{name:<20} {n:>8} {rate:>9.1%} {own_rate:>8.1%} {first['seconds'] / len(slides):>8.1f} "
            f"{n / minutes if minutes else 0:>12.1f} {first['completion_tokens'] / first['seconds']:>9.1f} "
            f"{first['fallbacks']:>9} {first['requests']:>8} "
            f"{again['requests']:>15} {again['cache_hits']:>10}"
        )
    # The backend whose OWN captions pass most often; fallback text is the grounded backend's.
    best = max(rows, key=lambda row: (row[3], row[0] == "grounded"))
    print(f"default backend by measurement (own captions passing every gate): {best[0]}")
    sequential = next(r for r in rows if r[0] == "embedded-sequential")[4]
    concurrent = next(r for r in rows if r[0] == "embedded")[4]
    print(f"embedded, concurrency 4 vs 1: {sequential['seconds'] / concurrent['seconds']:.2f}x faster")


if __name__ == "__main__":
    main()
