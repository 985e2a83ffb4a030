"""Independent evidence: a second nucleus detector that re-measures each patch's cellularity.

Every caption of the default backend is written from one measurement (the LoG detector of
:mod:`pathgen_dagster.lib.selection.nuclei`), and a check that compares the caption with that
same measurement certifies a wrong measurement as faithful (issue 10). This module makes a
second measurement of the same quantity by a different method, so that the revise agent
and the quality checks can see when the first one is in doubt:

* **distance-transform watershed** on the haematoxylin channel (the classic splitter of
  touching nuclei, as in CellProfiler and QuPath): haematoxylin optical density block-averaged
  to about ``grid_um`` microns per pixel and smoothed; nuclear foreground above
  ``max(Otsu of the field, min_od)``, opened, holes filled, specks removed; the Euclidean
  distance to the background in microns; one marker per local maximum of that distance at
  least ``min_separation_um`` apart and at least ``min_radius_um`` deep; a watershed of the
  negated distance from the markers inside the foreground. Each basin of at least
  ``min_area_um2`` is a nucleus. It shares nothing with the LoG detector but the colour
  deconvolution: no Laplacian, no scale space, a mask instead of blob responses.
* its cellularity band (nuclei per mm2 of tissue) with edges fitted on the even rows of the
  labelled calibration set (tests/data/calibration), like the LoG detector's.

:func:`confirm` says, for each band the two measure, whether they agree; a claim about a
band they disagree on is not supported by the evidence (the revise agent removes it, the
``confirmed_by_second_detector`` rule quarantines a caption that still makes it).

    .venv/bin/python -m pathgen_dagster.lib.quality.evidence   # agreement with the labels
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from pathgen_dagster.lib.selection.facts import BANDS, Band, MorphologyFacts

# The LoG detector's colour deconvolution and block mean: the only steps the two share.
from pathgen_dagster.lib.selection.nuclei import block_mean, haematoxylin

DETECTOR_ID = "watershed-h-v1"


@dataclass(frozen=True)
class WatershedSettings:
    """The second detector's parameters (physical units), chosen on the even calibration rows."""

    grid_um: float = 0.5
    smoothing_um: float = 0.5
    min_od: float = 0.25
    min_radius_um: float = 1.5
    min_separation_um: float = 5.0
    min_area_um2: float = 8.0


DEFAULT_WATERSHED = WatershedSettings()

# Fitted by ``python -m pathgen_dagster.lib.quality.evidence`` on the even calibration rows.
CELLULARITY_EDGES_PER_MM2 = (3670.0, 8070.0)
CELLULARITY = Band(
    "nuclei_density_per_mm2",
    CELLULARITY_EDGES_PER_MM2,
    BANDS["cellularity"].labels,
    "nuclei per mm2 of tissue, counted by the distance-transform watershed; edges fitted "
    "to the labelled calibration set",
)


def segment(rgb: np.ndarray, mpp: float, settings: WatershedSettings = DEFAULT_WATERSHED) -> np.ndarray:
    """Label image of the nuclei in ``rgb`` on the detector's working grid (0 = background)."""
    if not mpp > 0:
        raise ValueError(f"mpp must be positive microns per pixel, got {mpp}")
    factor = max(1, round(settings.grid_um / mpp))
    grid_um = mpp * factor
    h = ndi.gaussian_filter(block_mean(haematoxylin(rgb), factor), settings.smoothing_um / grid_um)
    level = settings.min_od
    if np.ptp(h) > 0:
        level = max(level, float(threshold_otsu(h)))
    foreground = ndi.binary_fill_holes(ndi.binary_opening(h >= level, structure=np.ones((3, 3))))
    min_pixels = settings.min_area_um2 / grid_um**2
    components, n = ndi.label(foreground)
    if n == 0:
        return components
    sizes = np.bincount(components.ravel())
    foreground &= sizes[components] >= min_pixels
    distance = ndi.distance_transform_edt(foreground) * grid_um
    peaks = peak_local_max(
        distance,
        min_distance=max(1, int(round(settings.min_separation_um / grid_um))),
        threshold_abs=settings.min_radius_um,
        labels=ndi.label(foreground)[0],
        exclude_border=False,
    )
    markers = np.zeros(distance.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=foreground)
    areas = np.bincount(labels.ravel(), minlength=len(peaks) + 1)
    keep = areas >= min_pixels
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def count(rgb: np.ndarray, mpp: float, settings: WatershedSettings = DEFAULT_WATERSHED) -> int:
    """Number of nuclei the watershed finds in ``rgb``."""
    return int(len(np.unique(segment(rgb, mpp, settings))) - 1)


@dataclass(frozen=True)
class Evidence:
    """The second detector's measurement of one patch, next to the first one's.

    Attributes:
        detector_id: which detector and version measured it.
        nuclei_count: nuclei it found.
        nuclei_density_per_mm2: those per mm2 of tissue (tissue area from the patch facts);
            NaN when the scale is unknown.
        cellularity: its band, or "unknown" without a scale or without tissue.
        first_cellularity: the band the caption was written from (LoG detector).
    """

    detector_id: str
    nuclei_count: int
    nuclei_density_per_mm2: float
    cellularity: str
    first_cellularity: str

    @property
    def disputed(self) -> tuple[str, ...]:
        """Bands the two detectors measure differently (text must not assert them)."""
        if "unknown" in (self.cellularity, self.first_cellularity):
            return ()
        return ("cellularity",) if self.cellularity != self.first_cellularity else ()

    def reason(self, band: str) -> str:
        """Why ``band`` is in doubt, in words, for edit logs and quality reasons."""
        return (
            f"{band} measured '{self.first_cellularity}' by the LoG detector but "
            f"'{self.cellularity}' by the second detector ({self.detector_id}: "
            f"{self.nuclei_count} nuclei, {self.nuclei_density_per_mm2:.0f} per mm2 of tissue)"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Evidence:
        return cls(**json.loads(text))


def tissue_mm2(facts: MorphologyFacts, shape: tuple[int, ...]) -> float:
    """Tissue area of an image of ``shape`` in mm2 (NaN when the scale is unknown)."""
    return facts.tissue_fraction * shape[0] * shape[1] * facts.mpp_um**2 / 1e6


def measure(rgb: np.ndarray, facts: MorphologyFacts) -> Evidence:
    """The second detector's evidence on one patch whose (first) measured facts are ``facts``.

    The tissue fraction (white-space mask) is shared with the facts: it is not a nucleus
    measurement. Without a known scale nothing physical is measured (mpp is never invented).
    """
    area = tissue_mm2(facts, rgb.shape)
    if not facts.scale_known or not math.isfinite(area) or area <= 0:
        return Evidence(DETECTOR_ID, 0, math.nan, "unknown", facts.cellularity)
    found = count(rgb, facts.mpp_um)
    density = found / area
    return Evidence(DETECTOR_ID, found, density, CELLULARITY.label(density), facts.cellularity)


def measure_jpeg(image_jpeg: bytes, facts: MorphologyFacts) -> Evidence:
    """:func:`measure` of a patch stored as JPEG bytes (``patches.image_jpeg``)."""
    rgb = np.asarray(Image.open(io.BytesIO(image_jpeg)).convert("RGB"))
    return measure(rgb, facts)


def claim_disagreements(text: str | None, evidence: Evidence | None) -> list[str]:
    """The claims of ``text`` about bands the two detectors disagree on, as reasons."""
    from pathgen_dagster.lib.captions.verbalize import read_claims

    if not text or evidence is None or not evidence.disputed:
        return []
    return [
        f"{claim.phrase}: {evidence.reason(claim.claim)}"
        for claim in read_claims(text)
        if claim.claim in evidence.disputed
    ]


# ---------------------------------------------------------------------------------------
# Validation against the labelled calibration set
# ---------------------------------------------------------------------------------------


def calibration_report() -> dict[str, object]:
    """The second detector against the labels and against the LoG detector (64 crops)."""
    from pathgen_dagster.lib.quality import calibration

    crops, facts = calibration.load(), calibration.measured()
    truth = np.array([c.nuclei_count for c in crops])
    counts = np.array([count(c.rgb, c.mpp) for c in crops])
    log_counts = np.array([f.nuclei_count_log for f in facts])
    area = np.array([tissue_mm2(f, c.rgb.shape) for c, f in zip(crops, facts, strict=True)])
    density = counts / np.maximum(area, 1e-12)
    labels = [c.cellularity for c in crops]
    fit, hold = slice(0, None, 2), slice(1, None, 2)
    edges = calibration.fit_edges(density[fit], labels[fit], calibration.CELLULARITY)
    bands = [calibration.band(d, edges, calibration.CELLULARITY) for d in density]
    log_bands = [f.cellularity for f in facts]
    agree = np.array([a == b for a, b in zip(bands, log_bands, strict=True)])
    right = np.array([b == t for b, t in zip(bands, labels, strict=True)])
    log_right = np.array([b == t for b, t in zip(log_bands, labels, strict=True)])
    return {
        "crops": len(crops),
        "count_mae": float(np.abs(counts - truth).mean()),
        "count_mae_holdout": float(np.abs(counts - truth)[hold].mean()),
        "count_corr": float(np.corrcoef(counts, truth)[0, 1]),
        "count_corr_with_log": float(np.corrcoef(counts, log_counts)[0, 1]),
        "cellularity_edges_per_mm2": edges,
        "cellularity_agreement": float(right.mean()),
        "cellularity_agreement_holdout": float(right[hold].mean()),
        "band_agreement_with_log": float(agree.mean()),
        "log_accuracy_where_detectors_agree": float(log_right[agree].mean()) if agree.any() else math.nan,
        "log_accuracy_where_they_disagree": float(log_right[~agree].mean()) if (~agree).any() else math.nan,
    }


if __name__ == "__main__":
    for key, value in calibration_report().items():
        print(f"{key:40s} {value}")
