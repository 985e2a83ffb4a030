"""What a tile's measurements mean: the band table, :class:`MorphologyFacts` and the embedding.

Everything here is plain numpy: the caption, quality and instruction stages read facts and
bands without loading torch, which only :mod:`pathgen_dagster.lib.selection.morphology`
(the measuring) needs. Measurements, bands and the descriptor are described there.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

import numpy as np

from pathgen_dagster.lib.selection import findings

# Inner bin edges (OD) of the joint stain histogram in the embedding: 4 x 4 bins, H major.
STAIN_HISTOGRAM_H_EDGES = (0.1, 0.25, 0.5)
STAIN_HISTOGRAM_E_EDGES = (0.1, 0.2, 0.3)
STAIN_HISTOGRAM_BINS = (len(STAIN_HISTOGRAM_H_EDGES) + 1) * (len(STAIN_HISTOGRAM_E_EDGES) + 1)


class Band(NamedTuple):
    """A categorical band: the measurement it reads, its cut points, labels and meaning."""

    measure: str
    edges: tuple[float, ...]
    labels: tuple[str, ...]
    meaning: str

    def label(self, value: float) -> str:
        """The label of ``value``; a value equal to an edge falls in the upper band."""
        return self.labels[bisect_right(self.edges, value)]


# Fitted by pathgen_dagster.lib.quality.calibration on the even rows of the labelled set.
CELLULARITY_EDGES_PER_MM2 = (3400.0, 7700.0)
STROMA_EDGES = (0.45, 0.64)

# THE band table. The grounded caption backend words its sentences from these labels and
# the quality stage checks text against them, so every threshold lives here and nowhere
# else. Edges were set on the real H&E images the project ships with (lib/sources.py):
# tiles of the CMU skin slide (epidermis, dermis) and the tiatoolbox carcinoma patch.
BANDS: dict[str, Band] = {
    "cellularity": Band(
        "nuclei_density_log_per_mm2",
        CELLULARITY_EDGES_PER_MM2,
        ("low", "moderate", "high"),
        "nuclei per mm2 of tissue, counted by the LoG detector that splits touching nuclei; "
        "edges fitted to the labelled calibration set (tests/data/calibration)",
    ),
    "cellularity_area": Band(
        "nuclear_fraction",
        (0.12, 0.22),
        ("low", "moderate", "high"),
        "share of tissue covered by thresholded haematoxylin components: the first "
        "detector, kept as independent evidence that the quality stage checks captions against",
    ),
    "nuclear_size": Band(
        "nuclear_area_mean_um2",
        (40.0, 90.0),
        ("small", "medium", "large"),
        "mean single-nucleus area; lymphocytes ~30-40 um2, resting epithelium ~40-70 um2",
    ),
    "pleomorphism": Band(
        "nuclear_area_std_um2",
        (50.0, 70.0),
        ("mild", "moderate", "marked"),
        "spread of single-nucleus area in um2: absolute, so nuclei both large and variable "
        "score highest (relative spreads were dominated by segmentation noise)",
    ),
    "stroma": Band(
        "eosin_fraction",
        STROMA_EDGES,
        ("scant", "moderate", "abundant"),
        "share of tissue where eosin dominates: collagenous stroma or eosinophilic cytoplasm",
    ),
    "lumen_or_fat": Band(
        "white_fraction",
        (0.05, 0.25),
        ("absent", "focal", "prominent"),
        "share of the tile that is white space: lumina, fat or slide background",
    ),
    "inflammation_hint": Band(
        "lymphoid_density_per_mm2",
        (700.0,),
        ("none", "possible"),
        "small, round, dark (lymphocyte-like) nuclei per mm2 of tissue",
    ),
}

# Bands kept as independent evidence for the quality stage: never worded in text.
EVIDENCE_BANDS = ("cellularity_area",)

# Below this many nuclei, size and pleomorphism bands describe noise: text must not speak
# of nuclear size or pleomorphism, and claims about them are unsupported.
NUCLEAR_DETAIL_MIN_COUNT = 8
# Below this tissue fraction a tile is essentially empty: no cellularity or stroma claims.
TISSUE_MIN_FRACTION = 0.10


@dataclass(frozen=True)
class MorphologyFacts:
    """Measured morphology of one tile; fractions are of the tile unless named otherwise."""

    mpp_um: float  # microns per pixel of the tile as given
    field_width_um: float  # physical width of the tile
    tissue_fraction: float  # share of the tile that is not white space
    white_fraction: float  # share of the tile that is white space: lumen, fat or background
    eosin_fraction: float  # share of TISSUE where eosin dominates haematoxylin
    haematoxylin_fraction: float  # share of TISSUE where haematoxylin dominates
    haematoxylin_od_mean: float  # stain statistics over tissue (OD, log10 units)
    haematoxylin_od_std: float
    haematoxylin_od_p10: float
    haematoxylin_od_p50: float
    haematoxylin_od_p90: float
    eosin_od_mean: float
    eosin_od_std: float
    eosin_od_p10: float
    eosin_od_p50: float
    eosin_od_p90: float
    nuclei_count: int  # single nuclei + clusters counted as area / mean single area
    nuclei_density_per_mm2: float  # per mm2 of tissue
    nuclear_area_mean_um2: float  # single nuclei only, as are the shape statistics below
    nuclear_area_std_um2: float
    nuclear_area_cv: float  # std / mean of nuclear area
    nuclear_area_log_sd: float  # std of ln(nuclear area): scale-free size variation
    nuclear_eccentricity_mean: float  # 0 = circle, -> 1 = line
    nuclear_haematoxylin_od_mean: float  # darkness of nuclei (hyperchromasia proxy)
    nuclear_fraction: float  # share of TISSUE inside nuclei (clusters included)
    nc_ratio_proxy: float  # nuclear / non-nuclear tissue area
    lymphoid_fraction: float  # share of nuclei that are small, round and dark
    lymphoid_density_per_mm2: float  # small, round, dark nuclei per mm2 of tissue
    nuclei_count_log: int  # nuclei found by the LoG detector (lib/selection/nuclei.py)
    nuclei_density_log_per_mm2: float  # those per mm2 of tissue: what cellularity reads
    gradient_mean: float  # Sobel magnitude of grey (0-1) per texture pixel, over tissue
    gradient_std: float
    orientation_coherence: float  # 0 = isotropic texture, 1 = all edges parallel
    bandpass_energy_fine: float  # mean |DoG| of grey over tissue, 2-4 um
    bandpass_energy_medium: float  # 4-8 um
    bandpass_energy_coarse: float  # 8-16 um
    cellularity: str
    nuclear_size: str
    pleomorphism: str
    stroma: str
    lumen_or_fat: str
    inflammation_hint: str
    cellularity_area: str  # the old area-based cellularity: second, independent evidence
    # Where mpp_um came from: "slide" (the scanner's metadata), "config" (set by the user
    # for a slide that records none) or "unknown" (no scale: physical measures are NaN,
    # their bands "unknown", and no text may say anything that depends on scale).
    mpp_source: str = "slide"
    # Finding detectors (lib/selection/findings.py); NaN: measured by an encoder before
    # them, so the findings are unknown and never worded.
    keratin_fraction: float = math.nan  # dark tissue away from nuclei: keratin
    collagen_fraction: float = math.nan  # pink, haematoxylin-poor tissue away from nuclei
    ink_fraction: float = math.nan  # tissue-marking ink (green exceeds red)
    red_cell_fraction: float = math.nan  # saturated red: red blood cells
    enclosed_lumina: float = math.nan  # round white holes enclosed by tissue
    elongated_nuclei_fraction: float = math.nan  # share of LoG nuclei that are elongated

    def to_dict(self) -> dict[str, Any]:
        """The facts as a plain dict of floats, ints and strings (JSON- and Arrow-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MorphologyFacts:
        """Facts rebuilt from :meth:`to_dict` output; unknown keys are ignored."""
        cast = {"float": float, "int": int, "str": str}
        missing = [
            f.name for f in fields(cls) if f.name not in values and f.name not in _OPTIONAL_FACTS
        ]
        if missing:
            raise KeyError(
                f"facts lack {missing}: they were measured by an older morphology encoder; "
                "re-materialize patch_embeddings and patches for this slide"
            )
        return cls(
            **{
                f.name: cast[f.type](values.get(f.name, f.default))
                for f in fields(cls)
            }
        )

    @property
    def scale_known(self) -> bool:
        """False when the slide's microns per pixel are unknown (see ``mpp_source``)."""
        return self.mpp_source != "unknown"

    @property
    def nuclear_detail_supported(self) -> bool:
        """True when enough nuclei were found to speak of their size and pleomorphism."""
        return self.scale_known and self.nuclei_count >= NUCLEAR_DETAIL_MIN_COUNT


# Facts an older encoder did not record: their defaults say "not measured".
_OPTIONAL_FACTS = frozenset({"mpp_source", *findings.MEASURES})

MEASUREMENT_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(MorphologyFacts) if f.name not in BANDS and f.name != "mpp_source"
)

# Measurements and bands that need a physical scale: unknown when the mpp is unknown.
# Stain and white-space shares are ratios of pixels and stay measured.
SCALE_DEPENDENT_MEASURES = (
    "mpp_um",
    "field_width_um",
    "nuclei_density_per_mm2",
    "nuclear_area_mean_um2",
    "nuclear_area_std_um2",
    "lymphoid_density_per_mm2",
    "nuclei_density_log_per_mm2",
)
SCALE_DEPENDENT_BANDS = (
    "cellularity",
    "cellularity_area",
    "nuclear_size",
    "pleomorphism",
    "inflammation_hint",
)
UNKNOWN = "unknown"


def without_scale(facts: MorphologyFacts) -> MorphologyFacts:
    """``facts`` of a tile whose mpp is unknown: physical measures NaN, their bands unknown.

    The detector ran on the native pixel grid with its micron thresholds read as pixels
    (:meth:`MorphologyEncoder.embed`), which is good enough to compare tiles of one slide
    with each other but says nothing physical; nothing scale-dependent survives here.
    """
    return replace(
        facts,
        **{name: math.nan for name in SCALE_DEPENDENT_MEASURES},
        **{name: UNKNOWN for name in SCALE_DEPENDENT_BANDS},
        mpp_source=UNKNOWN,
    )


class DescriptorComponent(NamedTuple):
    """One entry of the embedding: where it sits in the vector and what it measures."""

    name: str
    index: slice
    meaning: str


_SCALAR_COMPONENTS = {
    "haematoxylin_od_mean": "mean haematoxylin OD over tissue",
    "haematoxylin_od_std": "std of haematoxylin OD over tissue",
    "haematoxylin_od_p10": "10th percentile haematoxylin OD over tissue",
    "haematoxylin_od_p50": "median haematoxylin OD over tissue",
    "haematoxylin_od_p90": "90th percentile haematoxylin OD over tissue",
    "eosin_od_mean": "mean eosin OD over tissue",
    "eosin_od_std": "std of eosin OD over tissue",
    "eosin_od_p10": "10th percentile eosin OD over tissue",
    "eosin_od_p50": "median eosin OD over tissue",
    "eosin_od_p90": "90th percentile eosin OD over tissue",
    "tissue_fraction": "share of the tile that is tissue",
    "eosin_fraction": "share of tissue where eosin dominates",
    "log_nuclei_density": "ln(1 + nuclei per mm2 of tissue)",
    "nuclear_area_mean_um2": "mean single-nucleus area (um2)",
    "nuclear_area_std_um2": "std of single-nucleus area (um2)",
    "nuclear_area_log_sd": "std of ln(single-nucleus area)",
    "nuclear_eccentricity_mean": "mean nuclear eccentricity",
    "nuclear_haematoxylin_od_mean": "mean haematoxylin OD inside nuclei",
    "nuclear_fraction": "share of tissue inside nuclei",
    "lymphoid_fraction": "share of nuclei that are small, round and dark",
    "log_lymphoid_density": "ln(1 + lymphocyte-like nuclei per mm2 of tissue)",
    "gradient_mean": "mean Sobel gradient magnitude of grey over tissue (2 um grid)",
    "gradient_std": "std of Sobel gradient magnitude over tissue",
    "orientation_coherence": "mean structure-tensor coherence over tissue",
    "bandpass_energy_fine": "mean |DoG| of grey over tissue, 2-4 um",
    "bandpass_energy_medium": "mean |DoG| of grey over tissue, 4-8 um",
    "bandpass_energy_coarse": "mean |DoG| of grey over tissue, 8-16 um",
}
_DERIVED = {
    "log_nuclei_density": lambda f: math.log1p(f.nuclei_density_per_mm2),
    "log_lymphoid_density": lambda f: math.log1p(f.lymphoid_density_per_mm2),
}

# Every component of the embedding in vector order. After standardisation each scalar
# weighs 1 and the 16 histogram bins share a weight of 1 (each scaled by 1/4), so the
# colour histogram counts as one feature instead of drowning the morphology.
DESCRIPTOR_COMPONENTS: list[DescriptorComponent] = [
    *(
        DescriptorComponent(name, slice(i, i + 1), meaning)
        for i, (name, meaning) in enumerate(_SCALAR_COMPONENTS.items())
    ),
    DescriptorComponent(
        "stain_histogram",
        slice(len(_SCALAR_COMPONENTS), len(_SCALAR_COMPONENTS) + STAIN_HISTOGRAM_BINS),
        "joint H x E OD histogram of tissue pixels, 4 x 4 bins (H major), sums to 1",
    ),
]
DESCRIPTOR_DIM = DESCRIPTOR_COMPONENTS[-1].index.stop
COMPONENT_WEIGHTS = np.concatenate(
    [
        np.full(c.index.stop - c.index.start, (c.index.stop - c.index.start) ** -0.5)
        for c in DESCRIPTOR_COMPONENTS
    ]
)

# Fixed reference statistics (mean, std per vector element) from fit_reference_statistics
# over 110 tiles of the shipped images: 85 CMU skin tiles with >= 30 % tissue (672 px at a
# 168 px stride, 0.499 um/px) and 25 tiatoolbox carcinoma crops (672 px at an 82 px stride,
# 0.5 um/px assumed). Fixed, never per batch, so a tile's embedding does not depend on what
# it was batched with. Refit on a project's own slides and bump the encoder_id.
# fmt: off
REFERENCE_MEAN = np.array([
    0.3043, 0.281, 0.04819, 0.2259, 0.6674, 0.1544, 0.08894, 0.04989, 0.1444, 0.2654,
    0.6719, 0.3493, 8.113, 75.59, 55.82, 0.6453, 0.791, 0.6826, 0.2448, 0.09139, 5.053,
    0.7105, 0.5443, 0.5033, 0.03536, 0.03297, 0.03104,
    0.06161, 0.1095, 0.06286, 0.02406, 0.07914, 0.1645, 0.0441, 0.009737, 0.06278, 0.1497,
    0.0424, 0.005902, 0.0646, 0.05877, 0.03836, 0.02194,
])
REFERENCE_STD = np.array([
    0.0962, 0.06622, 0.04383, 0.09614, 0.1736, 0.01114, 0.02337, 0.03302, 0.01457, 0.0308,
    0.2032, 0.1515, 0.4066, 28.77, 13.69, 0.06208, 0.04055, 0.1399, 0.05717, 0.09545, 1.516,
    0.1078, 0.09372, 0.06112, 0.004739, 0.005516, 0.007639,
    0.02093, 0.05083, 0.04455, 0.02767, 0.03204, 0.0983, 0.0149, 0.008324, 0.03886, 0.04611,
    0.02424, 0.004717, 0.04607, 0.02886, 0.02382, 0.01806,
])
# fmt: on
# Standardised values are clipped so that one extreme measurement (an empty tile's zero
# nuclear area) cannot dominate the cosine.
Z_CLIP = 5.0


def fit_reference_statistics(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (mean, std) of raw descriptors for REFERENCE_MEAN and REFERENCE_STD.

    The std is floored at 1e-3 + 5 % of |mean| so that a near-constant element does not
    turn measurement noise into large z-scores.

    Args:
        raw: N x DESCRIPTOR_DIM raw descriptors from :func:`measure`.
    """
    mean = raw.mean(axis=0)
    return mean, np.maximum(raw.std(axis=0), 1e-3 + 0.05 * np.abs(mean))


def raw_descriptors(facts: list[MorphologyFacts], histograms: np.ndarray) -> np.ndarray:
    """N x DESCRIPTOR_DIM unstandardised descriptors in DESCRIPTOR_COMPONENTS order."""
    rows = [
        [_DERIVED[n](f) if n in _DERIVED else float(getattr(f, n)) for n in _SCALAR_COMPONENTS]
        for f in facts
    ]
    scalars = np.asarray(rows, dtype=np.float64).reshape(len(facts), len(_SCALAR_COMPONENTS))
    return np.concatenate([scalars, np.asarray(histograms, dtype=np.float64)], axis=1)


def standardise(raw: np.ndarray) -> np.ndarray:
    """N x DESCRIPTOR_DIM float32 embeddings: reference z-scores, clipped, weighted, unit L2."""
    z = np.clip((raw - REFERENCE_MEAN) / REFERENCE_STD, -Z_CLIP, Z_CLIP) * COMPONENT_WEIGHTS
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norms, 1e-12)).astype(np.float32)


def band_labels(measurements: dict[str, float]) -> dict[str, str]:
    """Each band of :data:`BANDS` labelled from the measurement it reads."""
    return {name: band.label(measurements[band.measure]) for name, band in BANDS.items()}


def facts_from_measurements(measurements: dict[str, float]) -> MorphologyFacts:
    values = {name: float(measurements[name]) for name in MEASUREMENT_NAMES}
    values["nuclei_count"] = int(round(values["nuclei_count"]))
    values["nuclei_count_log"] = int(values["nuclei_count_log"])
    return MorphologyFacts(**values, **band_labels(measurements))


def resolve_mpp(
    slide_id: str, recorded: float | None, configured: float | None
) -> tuple[float | None, str]:
    """(microns per pixel, source) of a slide: its own, else the configured one, else unknown.

    Never a default: a slide without mpp and without configuration is measured without
    scale (:func:`without_scale`), and its captions say nothing scale-dependent.

    Raises:
        ValueError: the configured mpp is not positive, or contradicts the slide's own by
            more than 2 % (one of them is wrong; the message says which to fix).
    """
    if configured is not None and not configured > 0:
        raise ValueError(
            f"slide {slide_id!r}, stage patch_embeddings: configured mpp_um={configured} is "
            "not a positive number of microns per pixel; fix the run config"
        )
    if recorded:
        if configured is not None and abs(configured - recorded) > 0.02 * recorded:
            raise ValueError(
                f"slide {slide_id!r}, stage patch_embeddings: configured mpp_um={configured} "
                f"contradicts the {recorded} um/px the slide records; remove mpp_um from the "
                "run config (the slide's own value is used) or fix the scanner metadata"
            )
        return recorded, "slide"
    if configured is not None:
        return configured, "config"
    return None, UNKNOWN
