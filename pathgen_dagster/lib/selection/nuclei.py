"""Nucleus detection that splits touching nuclei: multi-scale Laplacian of Gaussian.

The field-standard blob detector (Lindeberg's scale-normalised LoG, as in
``skimage.feature.blob_log``), applied to the haematoxylin optical density of colour
deconvolution and resampled to a fixed physical grid, so its sizes are microns:

1. haematoxylin OD (Ruifrok-Johnston, ``6 * skimage.color.rgb2hed``) block-averaged to
   about ``grid_um`` microns per pixel;
2. the scale-normalised response ``-sigma^2 * LoG(H)`` at sigmas for nuclear radii from
   ``min_radius_um`` to ``max_radius_um``, maximised over scale;
3. a nucleus is a local maximum of that response at least ``min_separation_um`` from a
   stronger one, whose response is at least ``min_response``, whose smoothed
   haematoxylin is at least ``min_od``, that is blob-like rather than a streak (ratio of
   the Hessian eigenvalues at its scale at least ``min_roundness``: keratin lamellae and
   fibre edges are streaks), and that is not green (tissue-marking ink unmixes as
   haematoxylin: green minus red of the smoothed colour at most ``max_green_excess``).

Two touching nuclei give two maxima (their centres are a nuclear diameter apart), where a
threshold-and-components detector sees one blob. Parameters were chosen on the even rows
of the labelled calibration set and checked on the odd rows (tests/data/calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# Ruifrok & Johnston: OD (log10) rows H, E, DAB; the first column of the inverse unmixes H.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_H_FROM_OD = np.linalg.inv(_RGB_FROM_HED)[:, 0]


@dataclass(frozen=True)
class LogSettings:
    """The detector's parameters (physical units)."""

    grid_um: float = 0.5
    min_radius_um: float = 2.0
    max_radius_um: float = 8.0
    n_scales: int = 5
    min_separation_um: float = 5.0
    min_response: float = 0.12
    min_od: float = 0.35
    min_roundness: float = 0.3
    max_green_excess: float = 0.0


DEFAULT_LOG = LogSettings()


# log10(255 / max(v, 1)) of every uint8 value: a lookup instead of a log per pixel.
_OD_OF_UINT8 = np.log10(255.0 / np.maximum(np.arange(256, dtype=np.float64), 1.0))


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """H x W haematoxylin optical density of a uint8 RGB image (clamped at 0)."""
    od = _OD_OF_UINT8[rgb] if rgb.dtype == np.uint8 else np.log10(255.0 / np.maximum(rgb, 1.0))
    return np.maximum(od @ _H_FROM_OD, 0.0)


def block_mean(image: np.ndarray, factor: int, dtype: type = np.float64) -> np.ndarray:
    """Means of ``factor`` x ``factor`` blocks of an H x W (x C) image; a remainder under
    ``factor`` at the right and bottom is dropped.

    Bit for bit ``image.reshape(h, f, w, f, ...).mean(axis=(1, 3), dtype=dtype)``, 7-10x
    faster. Integer pixels sum exactly in any order. For a 2-d float image numpy adds fewer
    than 8 values one after another, columns of a block then its rows, as the strided sums
    here do; from 8 on it keeps 8 partial sums, and with a channel axis it walks the block
    in another order, so those cases take numpy's own mean (tests/lib/selection/
    test_block_mean.py holds each case to the bit).
    """
    if factor <= 1:
        return image.astype(dtype, copy=False)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    image = image[: h * factor, : w * factor]
    exact = np.issubdtype(image.dtype, np.integer)
    if not exact and (image.ndim != 2 or factor >= 8):
        blocks = image.reshape(h, factor, w, factor, *image.shape[2:])
        return blocks.mean(axis=(1, 3), dtype=dtype)
    rows = image[:, 0::factor].astype(dtype)
    for j in range(1, factor):
        rows += image[:, j::factor]
    total = rows[0::factor].copy()
    for i in range(1, factor):
        total += rows[i::factor]
    return total / (factor * factor)


def detect(rgb: np.ndarray, mpp: float, settings: LogSettings = DEFAULT_LOG) -> np.ndarray:
    """(n, 5) float array of nuclei: row, column (pixels of ``rgb``), radius in microns,
    roundness (ratio of the Hessian eigenvalues at the nucleus's scale: 1 round, towards
    ``min_roundness`` elongated) and smoothed haematoxylin OD at its centre."""
    if not mpp > 0:
        raise ValueError(f"mpp must be positive microns per pixel, got {mpp}")
    factor = max(1, round(settings.grid_um / mpp))
    grid_um = mpp * factor
    h = block_mean(haematoxylin(rgb), factor)
    radii = np.geomspace(settings.min_radius_um, settings.max_radius_um, settings.n_scales)
    sigmas = radii / math.sqrt(2) / grid_um
    # The LoG is the sum of the Hessian's diagonal, and scipy computes each 2-d Gaussian as
    # 1-d passes, axis 0 then axis 1: doing those passes here, once, gives the LoG, the
    # Hessian diagonal for the roundness test and the smoothed haematoxylin bit for bit as
    # ndi.gaussian_laplace / gaussian_filter do, with 22 fewer passes over the image.
    smooth_rows = [ndi.gaussian_filter1d(h, sigma, axis=0) for sigma in sigmas]
    hrr = [
        ndi.gaussian_filter1d(ndi.gaussian_filter1d(h, sigma, axis=0, order=2), sigma, axis=1)
        for sigma in sigmas
    ]
    hcc = [
        ndi.gaussian_filter1d(rows, sigma, axis=1, order=2)
        for rows, sigma in zip(smooth_rows, sigmas, strict=True)
    ]
    stack = np.stack([-(sigma**2) * (a + b) for a, b, sigma in zip(hrr, hcc, sigmas, strict=True)])
    best = stack.max(axis=0)
    scale = stack.argmax(axis=0)
    smooth_sigma = settings.min_radius_um / math.sqrt(2) / grid_um
    smoothed = (
        ndi.gaussian_filter1d(smooth_rows[0], smooth_sigma, axis=1)
        if smooth_sigma == sigmas[0]
        else ndi.gaussian_filter(h, smooth_sigma)
    )
    separation = max(1, int(round(settings.min_separation_um / grid_um)))
    peaks = (
        (best == ndi.maximum_filter(best, size=2 * separation + 1, mode="constant", cval=-np.inf))
        & (best >= settings.min_response)
        & (smoothed >= settings.min_od)
    )
    rows, cols = np.nonzero(peaks)
    keep = np.ones(len(rows), dtype=bool)
    roundness = np.zeros(len(rows))
    if len(rows):
        for i, sigma in enumerate(sigmas):
            at = scale[rows, cols] == i
            if not at.any():
                continue
            rr, cc = hrr[i][rows[at], cols[at]], hcc[i][rows[at], cols[at]]
            rc = ndi.gaussian_filter(h, sigma, order=(1, 1))[rows[at], cols[at]]
            root = np.sqrt(((rr - cc) / 2) ** 2 + rc**2)
            mean = (rr + cc) / 2
            strong, weak = mean - root, mean + root  # both negative at a blob's centre
            roundness[at] = np.where(strong < 0, weak / np.minimum(strong, -1e-12), 0.0)
            keep[at] = (strong < 0) & (weak <= -settings.min_roundness * np.abs(strong))
        colour = np.stack([block_mean(rgb[..., c].astype(np.float64), factor) for c in range(3)], axis=-1)
        colour = ndi.gaussian_filter(colour, (sigmas[0], sigmas[0], 0))
        green_excess = (colour[rows, cols, 1] - colour[rows, cols, 0]) / 255.0
        keep &= green_excess <= settings.max_green_excess
    rows, cols, roundness = rows[keep], cols[keep], roundness[keep]
    return np.column_stack(
        [
            (rows + 0.5) * factor - 0.5,
            (cols + 0.5) * factor - 0.5,
            radii[scale[rows, cols]],
            np.clip(roundness, 0.0, 1.0),
            smoothed[rows, cols],
        ]
    ).reshape(-1, 5)


def count(rgb: np.ndarray, mpp: float, settings: LogSettings = DEFAULT_LOG) -> int:
    """Number of nuclei :func:`detect` finds in ``rgb``."""
    return len(detect(rgb, mpp, settings))
