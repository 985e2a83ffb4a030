"""Benchmark: tissue mask + tile grid, three ways on the same slides in one run.

- ``ours``: the `tiles` stage (bounded-memory uint8 thumbnail at 1/64, candidate cells
  measured at 1/8, borderline ones on level 0; includes the blur/saturation screens).
- ``clam``: CLAM's create_patches_fp way re-implemented (CLAM itself needs OpenCV, which
  this machine does not have): the whole level nearest 1/64 read in ONE region, HSV
  saturation median-filtered (7), fixed threshold 8, closed (4 x 4), holes filled, and a
  cell kept when any of its four quarter points lies in the mask (isInContourV3_Easy).
- ``naive``: every grid cell read at level 0 and measured pixel by pixel; this is the
  level-0 reference that recall and purity are computed against (same saturation
  threshold as ours).

- ``core``: our mask and grid alone (thumbnail, mask, integral-image fractions, keep
  above 50 %), without the per-cell reads: the part that compares with CLAM's whole work.

Each method runs in its own spawned process so its wall time, CPU time and peak memory
(VmHWM) are its own. Ratios are printed against CLAM measured in the same run. Two large
slides are generated next to the samples: a single-level TIFF (12k x 12k, no pyramid) and
an 80k x 60k 40x Aperio-style pyramid (levels 1, 4, 16, 64) with real H&E texture. The
naive level-0 reference is skipped above ``--skip-naive-over`` megapixels (recall and
purity then read n/a).

Usage: python scripts/bench_tiles.py LANDING_DIR [--large-side 12000] [--skip-naive-over MPX]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
from scipy import ndimage

from pathgen_dagster.lib.ingest.samples import write_large_pyramid, write_single_level_slide
from pathgen_dagster.lib.ingest.tiling import (
    TilingConfig,
    grid_tissue_fractions,
    level0_tissue_fractions,
    read_thumbnail,
    saturation_value,
    thumbnail_downsample,
    tile_grid,
    tissue_mask,
)
from pathgen_dagster.lib.ingest.wsi import SLIDE_SUFFIXES, composite_on_white, open_slide


def _mpp(slide: openslide.OpenSlide) -> float | None:
    return float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0)) or None


def ours(path: str) -> dict:
    with open_slide(path) as slide:
        grid, tissue = tile_grid(slide, TilingConfig(), _mpp(slide))
    return {
        "kept": list(zip(grid.xs.tolist(), grid.ys.tolist(), strict=True)),
        "cells": grid.grid_cells,
        "size_px": grid.size_px,
        "threshold_u8": tissue.threshold_u8,
    }


def core(path: str) -> dict:
    config = TilingConfig()
    with open_slide(path) as slide:
        width, height = slide.dimensions
        thumbnail, downsample = read_thumbnail(slide, thumbnail_downsample(width, height, config))
    tissue = tissue_mask(thumbnail, downsample, config)
    xs, ys, fractions = grid_tissue_fractions(tissue.mask, downsample, width, height, config.tile_size_px)
    keep = fractions > config.min_tissue_fraction
    return {"kept": list(zip(xs[keep].tolist(), ys[keep].tolist(), strict=True)), "cells": len(fractions)}


def clam(path: str, size_px: int = 672) -> dict:
    with open_slide(path) as slide:
        level = slide.get_best_level_for_downsample(64)
        downsample = slide.level_downsamples[level]
        rgb = composite_on_white(np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level])))
        saturation, _ = saturation_value(rgb)
        saturation = ndimage.median_filter(saturation, size=7)
        mask = ndimage.binary_closing(saturation > 8, structure=np.ones((4, 4)))
        mask = ndimage.binary_fill_holes(mask)
        width, height = slide.dimensions
    shift = size_px // 4
    kept, cells = [], 0
    for y in range(0, height - size_px + 1, size_px):
        for x in range(0, width - size_px + 1, size_px):
            cells += 1
            cx, cy = x + size_px // 2, y + size_px // 2
            points = [(cx - shift, cy - shift), (cx + shift, cy + shift)]
            points += [(cx + shift, cy - shift), (cx - shift, cy + shift)]
            for px, py in points:
                row, col = int(py / downsample), int(px / downsample)
                if row < mask.shape[0] and col < mask.shape[1] and mask[row, col]:
                    kept.append((x, y))
                    break
    return {"kept": kept, "cells": cells}


def naive(path: str, size_px: int, threshold_u8: int) -> dict:
    with open_slide(path) as slide:
        xs, ys, fractions = level0_tissue_fractions(slide, size_px, threshold_u8)
    return {
        "fractions": dict(zip(zip(xs.tolist(), ys.tolist(), strict=True), fractions.tolist(), strict=True))
    }


def _high_water_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(method: str, args: tuple, queue: multiprocessing.Queue) -> None:
    import resource

    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    result = {"ours": ours, "core": core, "clam": clam, "naive": naive}[method](*args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    result["peak_mib"] = _high_water_mib()
    queue.put(result)


def measure(method: str, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def scores(kept: list, reference: dict | None) -> tuple[float, float]:
    """Recall of level-0 cells above 50 %, and the share of kept cells at or below 50 %."""
    if reference is None:
        return float("nan"), float("nan")
    positive = {cell for cell, fraction in reference.items() if fraction > 0.5}
    kept = set(kept)
    recall = len(kept & positive) / len(positive) if positive else float("nan")
    impure = sum(reference[cell] <= 0.5 for cell in kept) / len(kept) if kept else 0.0
    return recall, impure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("landing", type=Path)
    parser.add_argument("--large-side", type=int, default=12_000)
    parser.add_argument("--skip-naive-over", type=float, default=1_000, help="megapixels")
    args = parser.parse_args()
    slides = sorted(
        p
        for p in args.landing.iterdir()
        if p.suffix.lower() in SLIDE_SUFFIXES
        and p.stat().st_size
        and "synthetic" in p.name
        or p.name.startswith("CMU")
    )
    with tempfile.TemporaryDirectory() as scratch:
        large = write_single_level_slide(Path(scratch) / "large-single-level.tiff", side=args.large_side)
        cmu = next(p for p in slides if p.name.startswith("CMU"))
        with openslide.OpenSlide(str(cmu)) as handle:  # real H&E texture for the big pyramid
            texture = np.asarray(handle.read_region((800, 1200), 0, (512, 512)).convert("RGB"))
        pyramid = write_large_pyramid(Path(scratch) / "large-pyramid-80kx60k.svs", texture)
        slides += [large, pyramid]
        header = f"{'slide':<28}{'method':>7}{'kept':>6}{'recall':>8}{'<=50%':>7}"
        header += f"{'wall s':>8}{'cpu s':>7}{'MiB':>7}"
        rows = [header]
        ratios = []
        for slide in slides:
            with openslide.OpenSlide(str(slide)) as handle:
                size = f"{handle.dimensions[0]}x{handle.dimensions[1]}, {handle.level_count} lv"
                megapixels = handle.dimensions[0] * handle.dimensions[1] / 1e6
            ours_result = measure("ours", str(slide))
            core_result = measure("core", str(slide))
            clam_result = measure("clam", str(slide), ours_result["size_px"])
            results = [("ours", ours_result), ("core", core_result), ("clam", clam_result)]
            reference = None
            if megapixels <= args.skip_naive_over:
                naive_result = measure(
                    "naive", str(slide), ours_result["size_px"], ours_result["threshold_u8"]
                )
                reference = naive_result["fractions"]
                naive_result["kept"] = [c for c, f in reference.items() if f > 0.5]
                results.append(("naive", naive_result))
            for name, result in results:
                recall, impure = scores(result["kept"], reference)
                rows.append(
                    f"{slide.name[:27]:<28}{name:>7}{len(result['kept']):>6}{recall:>8.3f}"
                    f"{impure:>7.1%}{result['wall_s']:>8.2f}{result['cpu_s']:>7.2f}{result['peak_mib']:>7.0f}"
                )
            ratios.append(
                f"{slide.name[:27]:<28} ({size}): ours/clam wall "
                f"{ours_result['wall_s'] / clam_result['wall_s']:.2f}x, "
                f"cpu {ours_result['cpu_s'] / clam_result['cpu_s']:.2f}x, "
                f"peak memory {ours_result['peak_mib'] / clam_result['peak_mib']:.2f}x; "
                f"core/clam cpu {core_result['cpu_s'] / clam_result['cpu_s']:.2f}x, "
                f"memory {core_result['peak_mib'] / clam_result['peak_mib']:.2f}x"
                + (
                    f"; naive/ours wall {results[-1][1]['wall_s'] / ours_result['wall_s']:.1f}x"
                    if reference is not None
                    else "; naive skipped"
                )
            )
    print("\n".join(rows))
    print("\nratios in this run (peak memory is the whole process, imports included):")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
