"""Findings a pathologist names (keratin, collagen, marking ink ...), each from a cheap detector.

Every detector reads the tile on a grid of about 1 um per pixel (block means) and returns
one number; a finding is *present* when its number reaches the detector's threshold. The
thresholds were fitted on the labelled field crops of the calibration set
(``tests/data/calibration``, 256 px crops labelled by looking, one column per finding)
by :mod:`pathgen_dagster.lib.quality.calibration`, which also reports each detector's
precision and recall against those labels.

A detector earns its word only by passing :data:`VALIDATION_BAR` on the labels. The
grounded verbaliser may write a finding only if it is in :data:`VALIDATED`; the others
are measured and stored (so a better detector can be validated later) but never worded,
and a test fails if the verbaliser can write one of them.

Cost: colour thresholds on the 1 um grid plus one dilation, reusing the nuclei that the
LoG detector (``nuclei.detect``) already found; see ``scripts/bench_log_cost.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pathgen_dagster.lib.selection.nuclei import block_mean

# Ruifrok & Johnston H&E(-DAB) optical density matrix; its inverse unmixes the stains.
_HE_FROM_OD = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))[
    :, :2
]
GRID_UM = 1.0
# White space: as the morphology encoder's (bright and unsaturated).
_WHITE_MIN_LIGHTNESS = 0.80 * 255
_WHITE_MAX_SATURATION = 0.18
# Ink: green exceeds red by this much (teal, green and blue-green marking inks; H&E never does).
_INK_GREEN_EXCESS = 30.0
# Keratin: dark (mean OD over the channels) tissue farther than this from any nucleus.
_KERATIN_MIN_OD = 0.55
_NUCLEUS_CLEARANCE_UM = 5.0
# Collagen: eosin-dominant, haematoxylin-poor tissue away from nuclei.
_COLLAGEN_MAX_H = 0.2
# Red cells: saturated red (eosinophilic collagen is pink: its green channel stays high).
_RED_MIN_R, _RED_MAX_G, _RED_MIN_R_MINUS_G, _RED_MIN_R_MINUS_B = 130.0, 80.0, 90.0, 70.0
# Lumina: white holes not touching the field's border, at least this large and this round.
_LUMEN_MIN_AREA_UM2, _LUMEN_MIN_SOLIDITY = 20.0, 0.75
# Elongated nuclei: LoG nuclei whose Hessian eigenvalue ratio is below this.
_ELONGATED_MAX_ROUNDNESS = 0.5


@dataclass(frozen=True)
class FindingDetector:
    """One finding: the measurement that detects it and the labels it was judged on.

    Attributes:
        name: the finding, as the verbaliser's claim rules name it.
        measure: the field of ``MorphologyFacts`` the detector writes (None: no detector).
        threshold: present when ``measure >= threshold`` (fitted on the labelled crops).
        label_column: the column of ``tests/data/calibration/labels.csv`` it is judged on.
        lexicon_term: the canonical term of ``lib/quality/data/lexicon.yaml`` for the finding.
        meaning: what the number is.
    """

    name: str
    measure: str | None
    threshold: float
    label_column: str
    lexicon_term: str
    meaning: str


@dataclass(frozen=True)
class ValidationBar:
    """What a detector must reach on the labelled crops before its word may be written."""

    min_positives: int = 5
    min_precision: float = 0.85
    min_recall: float = 0.5

    def passes(self, positives: int, precision: float, recall: float) -> bool:
        """Whether figures measured on the labelled crops meet the bar."""
        return bool(
            positives >= self.min_positives
            and precision >= self.min_precision
            and recall >= self.min_recall
        )


# Precision first: a false finding is a wrong caption; a missed one is only an omission.
VALIDATION_BAR = ValidationBar()

DETECTORS: tuple[FindingDetector, ...] = (
    FindingDetector(
        "keratin", "keratin_fraction", 0.1061, "keratin", "keratin",
        "share of tissue that is dark (mean RGB OD > 0.55) and more than 5 um from any nucleus",
    ),
    FindingDetector(
        "collagen", "collagen_fraction", 0.3462, "collagen", "collagen",
        "share of tissue where eosin exceeds haematoxylin, haematoxylin OD < 0.2, more than "
        "5 um from any nucleus",
    ),
    FindingDetector(
        "ink", "ink_fraction", 0.00111, "ink", "tissue-marking ink",
        "share of tissue whose green channel exceeds red by 30 or more on a 2 um grid (ink)",
    ),
    FindingDetector(
        "red_blood_cells", "red_cell_fraction", 0.0693, "red_blood_cells", "red blood cells",
        "share of tissue that is saturated red (R >= 130, G <= 80, R-G >= 90, R-B >= 70)",
    ),
    FindingDetector(
        "lumina", "enclosed_lumina", 2.5, "lumina", "lumina",
        "white holes enclosed by tissue, >= 20 um2, filling >= 75 % of their bounding ellipse",
    ),
    FindingDetector(
        "spindle_cells", "elongated_nuclei_fraction", 0.4281, "spindle_cells", "spindle cells",
        "share of LoG nuclei whose Hessian eigenvalue ratio is below 0.5",
    ),
    FindingDetector(
        "lymphocyte_cluster", "lymphoid_density_per_mm2", 1223.0, "lymphocyte_cluster",
        "lymphoid aggregates",
        "small, round, dark nuclei per mm2 of tissue (the threshold detector's count)",
    ),
    FindingDetector(
        "squamous_epithelium", None, math.inf, "squamous_epithelium", "squamous epithelium",
        "no detector yet: squamous epithelium and carcinoma cells measure alike here",
    ),
    FindingDetector(
        "adipose", None, math.inf, "adipose", "adipose tissue",
        "no detector yet, and the labelled crops (skin, carcinoma) hold no fat to judge one on",
    ),
)
DETECTORS_BY_NAME = {d.name: d for d in DETECTORS}

# The findings whose detectors pass VALIDATION_BAR on the labelled crops (python -m
# pathgen_dagster.lib.quality.calibration prints the figures; test_calibration checks
# that this set is exactly the one the bar admits). Only these are ever worded.
VALIDATED: frozenset[str] = frozenset({"keratin", "collagen", "ink"})

# Bands that assert a finding, judged against the labels by the same bar: band -> (the
# label that asserts it, the labels.csv column). inflammation_hint "possible" (>= 700
# small, round, dark nuclei per mm2 of tissue) reads as a lymphocytic infiltrate; on the
# 42 labelled fields 7 of its 9 calls had no lymphocyte cluster (precision 0.22, recall
# 0.40), and the claim-by-claim review of demo captions found "possible infiltrate" on
# scattered dark nuclei. A band outside VALIDATED_BANDS is measured and stored (it still
# shapes the embedding and retrieval) but never worded, and text asserting it is
# unsupported; test_calibration checks that VALIDATED_BANDS is exactly what the bar admits.
BAND_FINDINGS: dict[str, tuple[str, str]] = {"inflammation_hint": ("possible", "lymphocyte_cluster")}
VALIDATED_BANDS: frozenset[str] = frozenset()
UNVALIDATED_BANDS: frozenset[str] = frozenset(BAND_FINDINGS) - VALIDATED_BANDS

MEASURES: tuple[str, ...] = (
    "keratin_fraction",
    "collagen_fraction",
    "ink_fraction",
    "red_cell_fraction",
    "enclosed_lumina",
    "elongated_nuclei_fraction",
)
PRESENT, ABSENT, UNKNOWN = "present", "absent", "unknown"


def label(detector: FindingDetector, value: float) -> str:
    """'present', 'absent', or 'unknown' when the value was not measured (NaN)."""
    if detector.measure is None or not math.isfinite(value):
        return UNKNOWN
    return PRESENT if value >= detector.threshold else ABSENT


def measure(rgb: np.ndarray, mpp: float, detections: np.ndarray) -> dict[str, float]:
    """The detectors' numbers for one uint8 RGB tile at ``mpp`` microns per pixel.

    Args:
        rgb: H x W x 3 uint8 tile.
        mpp: microns per pixel of ``rgb``.
        detections: ``nuclei.detect(rgb, mpp)`` (row, column, radius, roundness, OD).
    """
    factor = max(1, round(GRID_UM / mpp))
    um = mpp * factor
    colour = block_mean(rgb, factor, np.float32)
    red, green, blue = colour[..., 0], colour[..., 1], colour[..., 2]
    brightest = np.maximum(np.maximum(red, green), blue)
    darkest = np.minimum(np.minimum(red, green), blue)
    saturation = (brightest - darkest) / np.maximum(brightest, 1.0)
    white = (_channel_mean(colour) >= _WHITE_MIN_LIGHTNESS) & (saturation <= _WHITE_MAX_SATURATION)
    tissue = ~white
    n_tissue = int(tissue.sum())
    od = np.log10(255.0 / np.maximum(colour, 1.0))
    stains = np.maximum(od @ _HE_FROM_OD.astype(np.float32), 0.0)
    haem, eosin = stains[..., 0], stains[..., 1]
    near_nucleus = np.zeros(white.shape, dtype=bool)
    if len(detections):
        rows = np.clip((detections[:, 0] / factor).astype(int), 0, white.shape[0] - 1)
        cols = np.clip((detections[:, 1] / factor).astype(int), 0, white.shape[1] - 1)
        near_nucleus[rows, cols] = True
        reach = max(1, int(round(_NUCLEUS_CLEARANCE_UM / um)))
        near_nucleus = ndi.binary_dilation(near_nucleus, structure=np.ones((3, 3), bool), iterations=reach)
    away = tissue & ~near_nucleus

    def share(mask: np.ndarray) -> float:
        return float(mask.sum() / n_tissue) if n_tissue else 0.0

    return {
        "keratin_fraction": share(away & (_channel_mean(od) > _KERATIN_MIN_OD)),
        "collagen_fraction": share(away & (eosin > haem) & (haem < _COLLAGEN_MAX_H)),
        "ink_fraction": _ink_fraction(colour, n_tissue),
        "red_cell_fraction": share(
            tissue
            & (red >= _RED_MIN_R)
            & (green <= _RED_MAX_G)
            & (red - green >= _RED_MIN_R_MINUS_G)
            & (red - blue >= _RED_MIN_R_MINUS_B)
        ),
        "enclosed_lumina": float(_enclosed_lumina(white, um)),
        "elongated_nuclei_fraction": (
            float((detections[:, 3] < _ELONGATED_MAX_ROUNDNESS).mean()) if len(detections) else 0.0
        ),
    }


def _channel_mean(image: np.ndarray) -> np.ndarray:
    """``image.mean(axis=-1)`` of an H x W x 3 float image, bit for bit, ~7x faster: numpy
    reduces a 3-long last axis one pixel at a time (tests/lib/selection/test_findings.py)."""
    total = image[..., 0] + image[..., 1]
    total += image[..., 2]
    return np.true_divide(total, np.intp(3), out=total, casting="unsafe")


def _ink_fraction(colour: np.ndarray, n_tissue: int) -> float:
    """Share of tissue (1 um pixels) under ink, judged on a 2 um grid: the one-pixel green
    fringes that lens aberration leaves along dark keratin edges average away there, ink
    blots do not (seen on CMU tiles, issue 10)."""
    coarse = block_mean(colour, 2, np.float32) if min(colour.shape[:2]) >= 2 else colour
    ink = coarse[..., 1] - coarse[..., 0] >= _INK_GREEN_EXCESS
    return float(ink.sum() * 4 / n_tissue) if n_tissue else 0.0


def _enclosed_lumina(white: np.ndarray, um: float) -> int:
    """White components that do not touch the border, large and solid enough to be lumina."""
    labels, n = ndi.label(white)
    if n == 0:
        return 0
    border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndi.find_objects(labels)
    found = 0
    for index in np.flatnonzero(areas * um * um >= _LUMEN_MIN_AREA_UM2).tolist():
        if index == 0 or index in border:
            continue
        # Area over the ellipse inscribed in the bounding box: a cheap solidity (round
        # lumina score near 1, thin clefts between fibres far below).
        box = boxes[index - 1]
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        if areas[index] / (math.pi / 4 * height * width) >= _LUMEN_MIN_SOLIDITY:
            found += 1
    return found
