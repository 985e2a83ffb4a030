"""Agreement of the measurements with the labelled calibration set (tests/data/calibration).

64 crops of real H&E (44 from the CMU skin slide, 20 from tiatoolbox's carcinoma image),
each labelled by looking at it: nuclei counted on a 4x zoom, cellularity band, stroma
amount, tissue type (the protocol is the folder's README). This module measures the
crops, scores every measure against the labels, and fits band edges on the even rows
(checked on the odd rows) so that bands come from labels, not from two images.

42 larger "field" crops (256 px) are labelled for findings (keratin, collagen, ink, red
blood cells, lumina, spindle cells, lymphocyte clusters, squamous epithelium, adipose):
:func:`findings_report` gives each detector of ``lib/selection/findings.py`` its
threshold (fitted on the even field rows), precision and recall, and whether it passes
the validation bar that decides if the verbaliser may write its word.

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

from pathgen_dagster.lib.selection import findings
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.lib.selection.morphology import measure

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
    findings: dict[str, bool]  # per finding column of labels.csv; empty when not labelled


def _rows(folder: Path) -> list[tuple[dict[str, str], dict[str, str]]]:
    with open(folder / "crops.csv", newline="") as handle:
        crops = {row["crop"].removesuffix(".png"): row for row in csv.DictReader(handle)}
    with open(folder / "labels.csv", newline="") as handle:
        return [(row, crops[row["crop"]]) for row in csv.DictReader(handle)]


def _crop(folder: Path, row: dict[str, str], where: dict[str, str]) -> Crop:
    columns = {d.label_column for d in findings.DETECTORS}
    return Crop(
        name=row["crop"],
        source=where["source"],
        mpp=float(where["mpp"]),
        rgb=np.asarray(Image.open(folder / "crops" / f"{row['crop']}.png").convert("RGB")),
        nuclei_count=int(row["nuclei_count"]) if row["nuclei_count"] else -1,
        cellularity=row["cellularity"],
        stroma=row["stroma"],
        tissue=row["tissue"],
        findings={c: row[c] == "1" for c in columns if row.get(c)},
    )


@cache
def load(folder: Path = FOLDER) -> tuple[Crop, ...]:
    """The crops labelled for nuclei, cellularity and stroma (96 px), in labels.csv order."""
    return tuple(_crop(folder, row, where) for row, where in _rows(folder) if row["nuclei_count"])


@cache
def load_fields(folder: Path = FOLDER) -> tuple[Crop, ...]:
    """The crops labelled for findings (256 px fields), in labels.csv order."""
    return tuple(
        _crop(folder, row, where) for row, where in _rows(folder) if row.get("ink", "") != ""
    )


@cache
def measured(folder: Path = FOLDER) -> tuple[MorphologyFacts, ...]:
    """The morphology encoder's facts of every crop (both detectors), at each crop's mpp."""
    return tuple(measure(c.rgb[None], c.mpp)[0][0] for c in load(folder))


@cache
def measured_fields(folder: Path = FOLDER) -> tuple[MorphologyFacts, ...]:
    """The morphology encoder's facts of every field crop."""
    return tuple(measure(c.rgb[None], c.mpp)[0][0] for c in load_fields(folder))


def fit_threshold(values: Sequence[float], truth: Sequence[bool], *, beta: float = 0.5) -> float:
    """The cut (midpoint between measured values) with the best F-beta; beta < 1 favours precision."""
    values, truth = np.asarray(values, dtype=float), np.asarray(truth, dtype=bool)
    candidates = np.unique(values)
    cuts = (candidates[:-1] + candidates[1:]) / 2 if len(candidates) > 1 else candidates
    best, best_cut = -1.0, float(cuts[-1])
    for cut in cuts:
        predicted = values >= cut
        tp = int((predicted & truth).sum())
        precision = tp / max(int(predicted.sum()), 1)
        recall = tp / max(int(truth.sum()), 1)
        score = (1 + beta**2) * precision * recall / max(beta**2 * precision + recall, 1e-12)
        if score > best:
            best, best_cut = score, float(cut)
    return best_cut


def _precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((predicted & truth).sum())
    return tp / max(int(predicted.sum()), 1), tp / max(int(truth.sum()), 1)


def findings_report(folder: Path = FOLDER) -> dict[str, dict[str, float | bool | int]]:
    """Per finding detector: positives, fitted and shipped threshold, precision, recall, passed.

    The threshold is fitted on the even field rows (F0.5: precision weighs more); precision
    and recall are reported on all field rows at the SHIPPED threshold and on the odd rows
    (``*_holdout``). A detector passes when it meets :data:`findings.VALIDATION_BAR` on all
    rows; a finding without a detector, or without enough positives, never passes.
    """
    crops, facts = load_fields(folder), measured_fields(folder)
    bar = findings.VALIDATION_BAR
    out: dict[str, dict[str, float | bool | int]] = {}
    for detector in findings.DETECTORS:
        truth = np.array([c.findings[detector.label_column] for c in crops])
        entry: dict[str, float | bool | int] = {"positives": int(truth.sum()), "crops": len(truth)}
        if detector.measure is None:
            out[detector.name] = {**entry, "passed": False}
            continue
        values = np.array([getattr(f, detector.measure) for f in facts], dtype=float)
        fitted = fit_threshold(values[::2], truth[::2])
        precision, recall = _precision_recall(values >= detector.threshold, truth)
        held_p, held_r = _precision_recall(values[1::2] >= detector.threshold, truth[1::2])
        out[detector.name] = {
            **entry,
            "threshold_fitted": fitted,
            "threshold_shipped": detector.threshold,
            "precision": precision,
            "recall": recall,
            "precision_holdout": held_p,
            "recall_holdout": held_r,
            "passed": bar.passes(entry["positives"], precision, recall),
        }
    return out


def band_findings_report(folder: Path = FOLDER) -> dict[str, dict[str, float | bool | int]]:
    """Per band of :data:`findings.BAND_FINDINGS`: its asserting label judged as a finding
    against the field labels (positives, precision, recall, passed), by the same bar."""
    crops, facts = load_fields(folder), measured_fields(folder)
    bar = findings.VALIDATION_BAR
    out: dict[str, dict[str, float | bool | int]] = {}
    for band, (label, column) in findings.BAND_FINDINGS.items():
        truth = np.array([c.findings[column] for c in crops])
        predicted = np.array([getattr(f, band) == label for f in facts])
        precision, recall = _precision_recall(predicted, truth)
        out[band] = {
            "positives": int(truth.sum()),
            "called": int(predicted.sum()),
            "precision": precision,
            "recall": recall,
            "passed": bar.passes(int(truth.sum()), precision, recall),
        }
    return out


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
    print(f"\nfindings (bar: {findings.VALIDATION_BAR})")
    for name, entry in [*findings_report().items(), *band_findings_report().items()]:
        figures = "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()
        )
        print(f"  {name:20s} {figures}")
