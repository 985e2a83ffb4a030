"""The LoG detector's FFT filters are scipy's Gaussian filters (lib/selection/nuclei.py).

The detector filters through one FFT of the padded image and sums the Hessian terms only at
its candidate maxima. These tests hold each of those to scipy's direct filters (truncate 4,
mode "reflect") on real H&E and at the borders of images smaller than the kernels, and the
detections to the ones they give.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from pathgen_dagster.lib.quality import calibration
from pathgen_dagster.lib.selection import nuclei

TOLERANCE = 1e-12


def _h_images() -> list[np.ndarray]:
    crops = [c.rgb for c in calibration.load()[:8]] + [c.rgb for c in calibration.load_fields()[::7]]
    images = [nuclei.haematoxylin(rgb) for rgb in crops]
    # Smaller than the widest kernel (91 taps): scipy reflects more than once there.
    return images + [images[-1][:9, :13], images[-1][:3, :3], images[-1][:1, :40]]


@pytest.mark.parametrize("sigma", [1.0, 2.83, 11.3])
def test_fft_log_and_smoothing_are_scipys(sigma: float) -> None:
    for h in _h_images():
        pad = nuclei._radius(sigma)
        padded = np.pad(h, pad, mode="symmetric")
        spectrum = nuclei.fft.rfft2(padded, nuclei._fft_shape(padded.shape))
        (log,), smooth = nuclei._transfers(padded.shape, (sigma,), sigma)
        inside = (slice(pad, pad + h.shape[0]), slice(pad, pad + h.shape[1]))
        got_log = nuclei._filtered(spectrum, log, padded.shape)[inside]
        got_smooth = nuclei._filtered(spectrum, smooth, padded.shape)[inside]
        assert np.abs(got_log + sigma**2 * ndi.gaussian_laplace(h, sigma)).max() < TOLERANCE
        assert np.abs(got_smooth - ndi.gaussian_filter(h, sigma)).max() < TOLERANCE


def test_hessian_and_smoothing_at_points_are_scipys() -> None:
    rng = np.random.default_rng(0)
    for h in _h_images():
        rows, cols = rng.integers(0, h.shape[0], 20), rng.integers(0, h.shape[1], 20)
        for sigma in (2.83, 11.3):
            pad = nuclei._radius(sigma) + 3  # the detector pads for its widest kernel
            rr, cc, rc = nuclei._hessian_at(np.pad(h, pad, mode="symmetric"), pad, rows, cols, sigma)
            for got, order in ((rr, (2, 0)), (cc, (0, 2)), (rc, (1, 1))):
                want = ndi.gaussian_filter(h, sigma, order=order)[rows, cols]
                assert np.abs(got - want).max() < TOLERANCE
            w0 = nuclei._weights(sigma, 0)
            smooth = nuclei._separable_at(np.pad(h, pad, mode="symmetric"), pad, rows, cols, w0, w0)
            assert np.abs(smooth - ndi.gaussian_filter(h, sigma)[rows, cols]).max() < TOLERANCE


def test_detections_are_the_maxima_of_scipys_log_on_the_calibration_crops() -> None:
    """Positions and scales as the scale-space maxima of scipy's LoG give them."""
    settings = nuclei.DEFAULT_LOG
    for crop in calibration.load():
        found = nuclei.detect(crop.rgb, crop.mpp)
        factor = max(1, round(settings.grid_um / crop.mpp))
        h = nuclei.block_mean(nuclei.haematoxylin(crop.rgb), factor)
        radii = np.geomspace(settings.min_radius_um, settings.max_radius_um, settings.n_scales)
        sigmas = radii / math.sqrt(2) / (crop.mpp * factor)
        stack = np.stack([-(s**2) * ndi.gaussian_laplace(h, s) for s in sigmas])
        rows = ((found[:, 0] + 0.5) / factor - 0.5).round().astype(int)
        cols = ((found[:, 1] + 0.5) / factor - 0.5).round().astype(int)
        assert np.array_equal(radii[stack.argmax(axis=0)[rows, cols]], found[:, 2]), crop.name
        assert (stack.max(axis=0)[rows, cols] >= settings.min_response).all(), crop.name
