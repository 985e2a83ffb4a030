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
from functools import lru_cache

import numpy as np
from scipy import fft
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
    if h.size == 0:  # smaller than one grid pixel
        return np.empty((0, 5))
    radii = np.geomspace(settings.min_radius_um, settings.max_radius_um, settings.n_scales)
    sigmas = tuple(float(s) for s in radii / math.sqrt(2) / grid_um)
    smooth_sigma = settings.min_radius_um / math.sqrt(2) / grid_um
    # The filters are scipy's Gaussians (gaussian_laplace, gaussian_filter: truncate 4,
    # mode "reflect"), applied through one FFT of the padded image, because the image is
    # filtered at six scales and the large kernels are 91 taps wide; the Hessian terms of
    # the roundness test are needed only at the candidate maxima and are summed there.
    # Against scipy's direct filters the responses differ by ~1e-15 (tests/lib/selection/
    # test_nuclei.py holds the filters to scipy's, and the detections to scipy's LoG maxima
    # on the calibration crops).
    pad = max(_radius(s) for s in (*sigmas, smooth_sigma))
    padded = np.pad(h, pad, mode="symmetric")  # scipy's "reflect"
    spectrum = fft.rfft2(padded, _fft_shape(padded.shape))
    log_transfers, smooth_transfer = _transfers(padded.shape, sigmas, smooth_sigma)
    inside = (slice(pad, pad + h.shape[0]), slice(pad, pad + h.shape[1]))
    # The maximum over scales and the first scale that reaches it (argmax over a stack of
    # the responses, without the stack: numpy's argmax over a leading axis is slow).
    best = _filtered(spectrum, log_transfers[0], padded.shape)[inside].copy()
    scale = np.zeros(best.shape, dtype=np.intp)
    for i, transfer in enumerate(log_transfers[1:], start=1):
        response = _filtered(spectrum, transfer, padded.shape)[inside]
        np.putmask(scale, response > best, i)
        np.maximum(best, response, out=best)
    smoothed = _filtered(spectrum, smooth_transfer, padded.shape)[inside]
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
            rr, cc, rc = _hessian_at(padded, pad, rows[at], cols[at], sigma)
            root = np.sqrt(((rr - cc) / 2) ** 2 + rc**2)
            mean = (rr + cc) / 2
            strong, weak = mean - root, mean + root  # both negative at a blob's centre
            roundness[at] = np.where(strong < 0, weak / np.minimum(strong, -1e-12), 0.0)
            keep[at] = (strong < 0) & (weak <= -settings.min_roundness * np.abs(strong))
        w0 = _weights(sigmas[0], 0)
        red, green = (
            _separable_at(np.pad(channel, pad, mode="symmetric"), pad, rows, cols, w0, w0)
            for channel in (block_mean(rgb[..., c], factor) for c in (0, 1))
        )
        keep &= (green - red) / 255.0 <= settings.max_green_excess
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


def _radius(sigma: float) -> int:
    """Half-width of scipy's Gaussian kernels (truncate 4)."""
    return int(4.0 * sigma + 0.5)


@lru_cache(maxsize=64)
def _weights(sigma: float, order: int) -> np.ndarray:
    """The correlation weights scipy's ``gaussian_filter1d`` uses, read off a unit impulse."""
    radius = _radius(sigma)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndi.gaussian_filter1d(impulse, sigma, order=order, mode="constant")[::-1]


def _fft_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return fft.next_fast_len(shape[0], real=True), fft.next_fast_len(shape[1], real=True)


def _axis_transfer(sigma: float, order: int, length: int, last: bool) -> np.ndarray:
    """Spectrum of the correlation with ``_weights(sigma, order)`` on a periodic axis."""
    weights, radius = _weights(sigma, order), _radius(sigma)
    kernel = np.zeros(length)
    kernel[: radius + 1] = weights[radius::-1]  # correlation = convolution with the mirror
    kernel[length - radius :] = weights[:radius:-1]
    return fft.rfft(kernel) if last else fft.fft(kernel)


@lru_cache(maxsize=8)
def _transfers(
    shape: tuple[int, int], sigmas: tuple[float, ...], smooth_sigma: float
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Per sigma the spectrum of ``-sigma^2 * LoG``, and the smoothing Gaussian's spectrum."""
    rows, cols = _fft_shape(shape)

    def separable(sigma: float, row_order: int, col_order: int) -> np.ndarray:
        return np.outer(
            _axis_transfer(sigma, row_order, rows, last=False),
            _axis_transfer(sigma, col_order, cols, last=True),
        )

    logs = tuple(-(s**2) * (separable(s, 2, 0) + separable(s, 0, 2)) for s in sigmas)
    return logs, separable(smooth_sigma, 0, 0)


def _filtered(spectrum: np.ndarray, transfer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return fft.irfft2(spectrum * transfer, _fft_shape(shape))[: shape[0], : shape[1]]


def _hessian_at(
    padded: np.ndarray, pad: int, rows: np.ndarray, cols: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian second derivatives (row-row, column-column, row-column) at the points."""
    w0, w1, w2 = (_weights(sigma, order) for order in (0, 1, 2))
    return tuple(_separable_at(padded, pad, rows, cols, a, b) for a, b in ((w2, w0), (w0, w2), (w1, w1)))


def _separable_at(
    padded: np.ndarray,
    pad: int,
    rows: np.ndarray,
    cols: np.ndarray,
    row_weights: np.ndarray,
    col_weights: np.ndarray,
) -> np.ndarray:
    """scipy's separable correlation (axis 0 with ``row_weights``, then axis 1) at the
    points only, from an image padded by ``pad`` (at least the kernels' half-width)."""
    radius = len(row_weights) // 2
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2)
    blocks = windows[rows + pad - radius, cols + pad - radius]
    return np.einsum("nij,i,j->n", blocks, row_weights, col_weights)


def count(rgb: np.ndarray, mpp: float, settings: LogSettings = DEFAULT_LOG) -> int:
    """Number of nuclei :func:`detect` finds in ``rgb``."""
    return len(detect(rgb, mpp, settings))
