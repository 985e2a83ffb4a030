"""Cost of the LoG nucleus detector against the rest of the morphology measurement.

.venv/bin/python scripts/bench_log_cost.py   # 9 real 672 px CMU tiles, 1 torch thread
"""

from __future__ import annotations

import time

import numpy as np
import openslide
import torch

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, fetch
from pathgen_dagster.lib.selection import findings, nuclei
from pathgen_dagster.lib.selection.morphology import measure

torch.set_num_threads(1)
with openslide.OpenSlide(str(fetch(CMU_SMALL_REGION))) as slide:
    image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
tiles = np.stack([image[y : y + 672, x : x + 672] for y in (900, 1572, 2244) for x in (300, 800, 1300)])
measure(tiles[:1], 0.499)  # warm-up


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


total = timed(lambda: measure(tiles, 0.499))
log_only = timed(lambda: [nuclei.count(t, 0.499) for t in tiles])
detections = [nuclei.detect(t, 0.499) for t in tiles]
findings_only = timed(lambda: [findings.measure(t, 0.499, d) for t, d in zip(tiles, detections, strict=True)])
n = len(tiles)
print(
    f"{n} tiles of 672 px: measure() incl. LoG {total[1] / n * 1000:.0f} ms CPU per tile "
    f"(wall {total[0] / n * 1000:.0f} ms); the LoG detector alone {log_only[1] / n * 1000:.0f} ms "
    f"CPU per tile (wall {log_only[0] / n * 1000:.0f} ms): {log_only[1] / total[1]:.0%} of the CPU"
)
print(
    f"the finding detectors alone {findings_only[1] / n * 1000:.0f} ms CPU per tile: "
    f"measure() without them would take {(total[1] - findings_only[1]) / n * 1000:.0f} ms, "
    f"with them {total[1] / n * 1000:.0f} ms ({total[1] / (total[1] - findings_only[1]):.2f}x)"
)
