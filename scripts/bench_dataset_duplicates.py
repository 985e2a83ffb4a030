"""Whole-dataset near-duplicate images at PathGen scale, against the old per-slide approach.

    .venv/bin/python scripts/bench_dataset_duplicates.py [--rows 1600000] [--old-reference 200000]

Synthetic image embeddings of the morphology encoder's size (43 components): 7,000-slide
scale, ~230 pairs per slide; a slide's rows scatter around its own centre (median cosine
between two rows of one slide ~0.84, as measured on the 24k x 24k slide of issue 10), slide
centres share a common direction (rows of different slides ~0.4), and 1 % of rows are
re-scans of a row of another slide (cosine ~0.99): the duplicates the step must find.

Each measurement runs in its own process so that its peak RSS is its own:

* ``new``: :func:`near_duplicate_images` over every row at once (the whole-dataset step);
  recall of the planted re-scans, and of every pair >= threshold on a brute-forced subset;
* ``old``: one slide of 230 captions checked against ``--old-reference`` kept captions of
  other slides with ``fidelity.find_duplicates`` (what ``caption_quality`` did per slide
  before; MiniLM dimension 384), and the cost that implies over a backfill.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

DIM = 43
PER_SLIDE = 230
THRESHOLD = MorphologyEncoder.dedup_threshold


def synthesize(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (rows, DIM) and the planted re-scans as (copy row, original row)."""
    rng = np.random.default_rng(seed)
    slides = max(1, rows // PER_SLIDE)
    common = rng.normal(size=DIM)
    common /= np.linalg.norm(common)
    centres = common + rng.normal(size=(slides, DIM)) / np.sqrt(DIM)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    slide_of = np.arange(rows) % slides
    x = centres[slide_of] + rng.normal(scale=0.066, size=(rows, DIM))
    planted = rng.choice(rows, size=rows // 100, replace=False)
    originals = (planted + PER_SLIDE * 3 + 1) % rows  # another slide
    x[planted] = x[originals] + rng.normal(scale=0.01, size=(len(planted), DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.stack([planted, originals], axis=1)


def _measure(kind: str, data: Path, rows: int, old_reference: int) -> dict:
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    if kind == "new":
        from pathgen_dagster.lib.dataset.duplicates import candidate_pairs, near_duplicate_images

        x = np.load(data / "x.npy", mmap_mode="r")
        ids = [f"p{i:08d}" for i in range(len(x))]  # id order = row order
        removed = near_duplicate_images(ids, x, THRESHOLD)
        result = {"removed": len(removed)}
        wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
        # Recall: planted re-scans in a removed pair, and every true pair of a subset.
        planted = np.load(data / "planted.npy")
        pairs = {(int(d.pair_id[1:]), int(d.duplicate_of[1:])) for d in removed}
        involved = {a for pair in pairs for a in pair}
        result["planted_caught"] = float(np.mean([a in involved for a in planted[:, 0]]))
        subset = np.asarray(x[:20_000])
        truth = [
            (i + start, j)
            for start in range(0, len(subset), 2_000)
            for i, j in np.argwhere(subset[start : start + 2_000] @ subset.T >= THRESHOLD).tolist()
            if j > i + start
        ]
        proposed = {tuple(p) for p in candidate_pairs(subset, THRESHOLD).tolist()}
        recall = float(np.mean([t in proposed for t in truth])) if truth else 1.0
        result["recall_all_pairs_20k"] = round(recall, 4)
        result["true_pairs_20k"] = len(truth)
        return {"kind": kind, "rows": rows, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                "peak_rss_gib": round(peak, 2), **result}
    else:
        from pathgen_dagster.lib.quality.fidelity import ReferenceCaptions, find_duplicates

        rng = np.random.default_rng(1)
        reference = rng.normal(size=(old_reference, 384)).astype(np.float32)
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        slide = rng.normal(size=(PER_SLIDE, 384)).astype(np.float32)
        slide /= np.linalg.norm(slide, axis=1, keepdims=True)
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        find_duplicates(
            [f"s{i}" for i in range(PER_SLIDE)],
            [f"k{i}" for i in range(PER_SLIDE)],
            slide,
            reference=ReferenceCaptions(
                [f"r{i}" for i in range(old_reference)],
                [f"rk{i}" for i in range(old_reference)],
                reference,
            ),
        )
        result = {}
        wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return {
        "kind": kind, "rows": rows, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak, 2), **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_600_000)
    parser.add_argument("--old-reference", type=int, default=200_000)
    parser.add_argument("--child", choices=("new", "old"))
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, Path(args.data), args.rows, args.old_reference)))
        return
    with tempfile.TemporaryDirectory() as folder:
        x, planted = synthesize(args.rows)
        np.save(Path(folder) / "x.npy", x)
        np.save(Path(folder) / "planted.npy", planted)
        del x
        results = {}
        for kind in ("new", "old"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--data", folder, "--rows", str(args.rows),
                 "--old-reference", str(args.old_reference)],
                check=True, capture_output=True, text=True,
            ).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
            print(results[kind], flush=True)
    new, old = results["new"], results["old"]
    slides = args.rows // PER_SLIDE
    scale = args.rows / args.old_reference
    print(
        f"whole-dataset step over {args.rows:,} rows: {new['cpu_s']} CPU s, {new['wall_s']} s wall, "
        f"{new['peak_rss_gib']} GiB peak = {new['cpu_s'] / slides * 1000:.1f} CPU ms per slide\n"
        f"old per-slide check against {args.old_reference:,} references: {old['cpu_s']} CPU s, "
        f"{old['peak_rss_gib']} GiB per slide (x{scale:.0f} at {args.rows:,} references); "
        f"ratio old per slide at this size / new per slide: "
        f"{old['cpu_s'] * scale / (new['cpu_s'] / slides):.0f}x"
    )


if __name__ == "__main__":
    main()
