"""Agreement of the measurements with the labelled calibration set (tests/data/calibration).

64 crops of real H&E (44 from the CMU skin slide, 20 from tiatoolbox's carcinoma image),
each labelled by looking at it: nuclei counted on a 4x zoom, cellularity band, stroma
amount, tissue type (the protocol is the folder's README). This module measures the
crops, scores every measure against the labels, and fits band edges on the even rows
(checked on the odd rows) so that bands come from labels, not from two images.

    .venv/bin/python -m pathgen_dagster.lib.quality.calibration     # prints the report
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from pathgen_dagster.lib.selection.morphology import MorphologyFacts, measure

FOLDER = Path(__file__).resolve().parents[3] / "tests" / "data" / "calibration"
CELLULARITY = ("low", "moderate", "high")
STROMA = ("scant", "moderate", "abundant")


@dataclass(frozen=True)
class Crop:
    name: str
    source: str
    mpp: float
    rgb: np.ndarray
    nuclei_count: int
    cellularity: str
    stroma: str
    tissue: str


@cache
def load(folder: Path = FOLDER) -> tuple[Crop, ...]:
    """The labelled crops, in the order of labels.csv."""
    with open(folder / "crops.csv", newline="") as handle:
        crops = {row["crop"].removesuffix(".png"): row for row in csv.DictReader(handle)}
    with open(folder / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    return tuple(
        Crop(
            name=row["crop"],
            source=crops[row["crop"]]["source"],
            mpp=float(crops[row["crop"]]["mpp"]),
            rgb=np.asarray(Image.open(folder / "crops" / f"{row['crop']}.png").convert("RGB")),
            nuclei_count=int(row["nuclei_count"]),
            cellularity=row["cellularity"],
            stroma=row["stroma"],
            tissue=row["tissue"],
        )
        for row in labels
    )


@cache
def measured(folder: Path = FOLDER) -> tuple[MorphologyFacts, ...]:
    """The morphology encoder's facts of every crop (both detectors), at each crop's mpp."""
    return tuple(measure(c.rgb[None], c.mpp)[0][0] for c in load(folder))


def fit_edges(values: Sequence[float], labels: Sequence[str], order: Sequence[str]) -> tuple[float, float]:
    """The two cut points that put most ``values`` in their labelled band (ties: lower cuts)."""
    values, ranks = np.asarray(values, dtype=float), np.array([order.index(v) for v in labels])
    candidates = np.unique(values)
    midpoints = (candidates[:-1] + candidates[1:]) / 2 if len(candidates) > 1 else candidates
    best, best_edges = -1, (float(midpoints[0]), float(midpoints[-1]))
    for low, high in itertools.combinations_with_replacement(midpoints, 2):
        agree = int(((values >= low).astype(int) + (values >= high) == ranks).sum())
        if agree > best:
            best, best_edges = agree, (float(low), float(high))
    return best_edges


def band(value: float, edges: tuple[float, ...], order: Sequence[str]) -> str:
    return order[int(sum(value >= e for e in edges))]


def report(folder: Path = FOLDER) -> dict[str, float]:
    """Per measure, agreement with the labels: before (old measure, old edges) and after."""
    crops, facts = load(folder), measured(folder)
    truth = np.array([c.nuclei_count for c in crops])
    old_count = np.array([f.nuclei_count for f in facts])
    new_count = np.array([f.nuclei_count_log for f in facts])
    density = [f.nuclei_density_log_per_mm2 for f in facts]
    eosin = [f.eosin_fraction for f in facts]
    cell = [c.cellularity for c in crops]
    stroma = [c.stroma for c in crops]
    fit = slice(0, None, 2)
    hold = slice(1, None, 2)
    cell_edges = fit_edges(density[fit], cell[fit], CELLULARITY)
    stroma_edges = fit_edges(eosin[fit], stroma[fit], STROMA)

    def agreement(predicted: list[str], labels: list[str], rows: slice = slice(None)) -> float:
        return float(np.mean([p == t for p, t in zip(predicted[rows], labels[rows], strict=True)]))

    new_cell = [band(d, cell_edges, CELLULARITY) for d in density]
    new_stroma = [band(e, stroma_edges, STROMA) for e in eosin]
    return {
        "crops": len(crops),
        "count_mae_before": float(np.abs(old_count - truth).mean()),
        "count_mae_after": float(np.abs(new_count - truth).mean()),
        "count_mae_after_holdout": float(np.abs(new_count - truth)[hold].mean()),
        "count_corr_before": float(np.corrcoef(old_count, truth)[0, 1]),
        "count_corr_after": float(np.corrcoef(new_count, truth)[0, 1]),
        "cellularity_agreement_before": agreement([f.cellularity_area for f in facts], cell),
        "cellularity_agreement_after": agreement(new_cell, cell),
        "cellularity_agreement_after_holdout": agreement(new_cell, cell, hold),
        "cellularity_edges_per_mm2": cell_edges,
        "stroma_agreement_before": agreement(
            [band(e, (0.30, 0.55), STROMA) for e in eosin],
            stroma,  # the edges before issue 10
        ),
        "stroma_agreement_after": agreement(new_stroma, stroma),
        "stroma_agreement_after_holdout": agreement(new_stroma, stroma, hold),
        "stroma_edges": stroma_edges,
    }


if __name__ == "__main__":
    for key, value in report().items():
        print(f"{key:40s} {value}")
