"""Per-tile CPU of the morphology measurement, this tree against a baseline, on real tiles.

    python scripts/bench_measure.py --baseline REF [--slide PATH] [--tiles 200] [--rounds 3]

``patch_embeddings`` spends most of its CPU in ``morphology.measure`` (the batched torch
measurements, the LoG nucleus detector and the finding detectors, all per tile). This
times that call alone on ``--tiles`` tissue tiles of the benchmark slide (the kept tiles of
``tiling.tile_grid``, a fixed random sample, cut once into ``--work``), in a fresh process
per tree, the trees alternating for ``--rounds`` rounds, one torch thread. It prints CPU
milliseconds a tile per round, the ratio of the medians, and whether the two trees gave the
same facts and descriptors to the bit. A whole-slide run (``scripts/bench_pipeline.py``)
is the figure that counts; this one isolates the stage's work from the rest of the run's
noise (identical code measured 7 % apart between two whole-slide runs of one stage).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from baseline_trees import compared_trees
from bench_pipeline import benchmark_slide

ROOT = Path(__file__).resolve().parents[1]

# Run in each tree's own process: times measure() and writes its facts and descriptors.
CHILD = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from pathgen_dagster.lib.selection.morphology import measure
tiles, mpp, out = np.load(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
measure(tiles[:16], mpp)  # imports and caches
started = time.process_time()
facts, raw = measure(tiles, mpp)
cpu = time.process_time() - started
np.save(out + ".npy", raw)
with open(out + ".json", "w") as f:
    json.dump([fact.to_dict() for fact in facts], f, sort_keys=True)
print(cpu / len(tiles) * 1000)
"""


def sample_tiles(slide_path: Path, count: int, work: Path) -> tuple[Path, float]:
    """``count`` kept tiles of the slide (fixed seed) as one .npy, and their mpp."""
    import openslide

    from pathgen_dagster.lib.ingest.tiling import TilingConfig, tile_grid
    from pathgen_dagster.lib.ingest.wsi import read_rgb

    target = work / f"{slide_path.stem}-{count}-tiles.npy"
    with openslide.OpenSlide(str(slide_path)) as slide:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        if not target.exists():
            print(f"cutting {count} tissue tiles of {slide_path.name} into {target} (once)", flush=True)
            grid, _ = tile_grid(slide, TilingConfig(), mpp)
            rng = np.random.default_rng(0)
            picked = np.sort(rng.choice(len(grid.xs), min(count, len(grid.xs)), replace=False))
            size = (grid.size_px, grid.size_px)
            tiles = [read_rgb(slide, int(grid.xs[i]), int(grid.ys[i]), 0, size) for i in picked]
            work.mkdir(parents=True, exist_ok=True)
            np.save(target, np.stack(tiles))
    return target, mpp


def _same(equal: bool) -> str:
    return "identical" if equal else "DIFFER"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git ref to compare against (a worktree is made)")
    parser.add_argument("--slide", type=Path, help="slide file (default: the benchmark slide)")
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-measure")
    args = parser.parse_args()
    slide = args.slide or benchmark_slide()  # bench_pipeline's, shared
    tiles, mpp = sample_tiles(slide, args.tiles, args.work)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timings: dict[str, list[float]] = {}
    with compared_trees(ROOT, args.baseline) as trees:
        for round_ in range(1, args.rounds + 1):
            for name, tree in trees.items():
                out = args.work / name.replace(" ", "_")
                result = subprocess.run(
                    [sys.executable, "-c", CHILD, str(tiles), str(mpp), str(out)],
                    cwd=tree,
                    env={**env, "PYTHONPATH": str(tree)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                timings.setdefault(name, []).append(float(result.stdout.split()[-1]))
                print(f"round {round_}  {name:<10} {timings[name][-1]:6.1f} ms CPU a tile", flush=True)
    base, new = (args.work / name for name in ("baseline", "this_tree"))
    same_raw = np.array_equal(np.load(f"{base}.npy"), np.load(f"{new}.npy"))
    same_facts = json.loads(Path(f"{base}.json").read_text()) == json.loads(Path(f"{new}.json").read_text())
    verdict = f"descriptors {_same(same_raw)}, facts {_same(same_facts)}"
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(
        f"{len(np.load(tiles, mmap_mode='r'))} tiles of {slide.name} at {mpp} um/px: "
        f"baseline {medians['baseline']:.1f}, this tree {medians['this tree']:.1f} ms CPU a tile "
        f"(median of {args.rounds}): {medians['this tree'] / medians['baseline']:.2f}x; "
        f"{verdict}"
    )
    return 0 if same_raw and same_facts else 1


if __name__ == "__main__":
    raise SystemExit(main())
