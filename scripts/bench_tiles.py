"""Benchmark: the `tiles` stage vs the naive way, on one slide, in the same run.

The stage decides which grid cells hold tissue from a 1/32 thumbnail (integral image over
the mask) and reads only the kept tiles, at a reduced level, for quality measures. The
naive way reads every grid cell at level 0 and thresholds its pixels. Each method runs in
its own child process so its peak memory (max RSS) is its own.

Usage: python scripts/bench_tiles.py SLIDE [--repeats N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np
import openslide
from skimage import color

from pathgen_dagster.lib.ingest.tiling import TilingConfig, quality_measures, tile_grid, tile_side_px
from pathgen_dagster.lib.ingest.wsi import read_rgb


def stage_way(path: str) -> tuple[int, int]:
    with openslide.OpenSlide(path) as slide:
        mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0)) or None
        grid, _ = tile_grid(slide, TilingConfig(), mpp)
        quality_measures(slide, grid, TilingConfig())
    return grid.grid_cells, len(grid)


def naive_way(path: str) -> tuple[int, int]:
    config = TilingConfig()
    with openslide.OpenSlide(path) as slide:
        mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0)) or None
        side = tile_side_px(config, mpp)
        width, height = slide.dimensions
        cells = kept = 0
        for y in range(0, height - side + 1, side):
            for x in range(0, width - side + 1, side):
                rgb = read_rgb(slide, x, y, 0, (side, side))
                saturation = color.rgb2hsv(rgb)[..., 1]
                cells += 1
                kept += (saturation > config.min_saturation).mean() > config.min_tissue_fraction
    return cells, int(kept)


def _child(method: str, path: str, queue: multiprocessing.Queue) -> None:
    started = time.perf_counter()
    cells, kept = {"stage": stage_way, "naive": naive_way}[method](path)
    elapsed = time.perf_counter() - started
    queue.put((cells, kept, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(method: str, path: str) -> tuple[int, int, float, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=_child, args=(method, path, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {m: [measure(m, args.slide) for _ in range(args.repeats)] for m in ("stage", "naive")}
    print(f"slide: {args.slide}")
    for method, runs in results.items():
        cells, kept, _, _ = runs[0]
        seconds = float(np.median([r[2] for r in runs]))
        peak = max(r[3] for r in runs)
        print(
            f"{method:>6}: {cells} grid cells, {kept} kept, median {seconds:.2f}s, "
            f"{cells / seconds:,.0f} grid cells/s, peak RSS {peak:,.0f} MiB"
        )
    stage_s = float(np.median([r[2] for r in results["stage"]]))
    naive_s = float(np.median([r[2] for r in results["naive"]]))
    print(f"speed-up of the stage over the naive way: {naive_s / stage_s:.1f}x")


if __name__ == "__main__":
    main()
