"""Measured H&E morphology of tiles: the weight-free default image encoder and caption facts.

No registry package carries pathology image weights (FACTS.md), so the project's default
image encoder is built from measurements a pathologist would recognise. For a batch of RGB
tiles :class:`MorphologyEncoder` returns

* one :class:`MorphologyFacts` per tile: stain optical densities, tissue composition,
  nuclei (count, density, size, shape, darkness) and texture, with units in the field
  names, plus categorical bands (``cellularity``, ``nuclear_size`` ...) read from the one
  band table :data:`BANDS`. The grounded caption backend (``lib/verbalize.py``) writes
  text from these facts and the quality stage checks captions against them.
* the numbers of the finding detectors (``lib/selection/findings.py``: keratin, collagen,
  marking ink, red cells, lumina, elongated nuclei), which reuse the LoG nuclei; only
  findings validated on labelled crops are ever worded;
* an embedding: the measurements listed in :data:`DESCRIPTOR_COMPONENTS`, standardised
  with fixed reference statistics, weighted and L2-normalised, so that cosine similarity
  compares tiles across slides and batches.

How the measurements are made (torch, batched, on ``device``):

1. Tiles are block-averaged to a working grid of about ``work_mpp`` microns per pixel (1.0
   by default), by the integer factor nearest ``work_mpp / mpp``: a 672 px tile at 20x
   (0.5 um/px) becomes 336 px, at 40x (0.25 um/px) 168 px; a remainder of fewer pixels
   than the factor at the right and bottom edges is dropped. Every length below is then
   physical (using ``mpp * factor``), so tiles from different scanners compare, and
   nuclei (5-15 um) still span 5-15 pixels. Tiles coarser than ``work_mpp`` are used as
   they are, never upsampled.
2. Ruifrok-Johnston colour deconvolution (the matrix of ``skimage.color.rgb2hed``) turns
   optical density ``log10(255 / I)`` into haematoxylin and eosin concentrations, equal to
   ``6 * skimage.color.rgb2hed`` (skimage divides natural-log OD by ``ln 1e6``).
3. White space is bright and unsaturated (slide background, lumina, fat); every other
   pixel is tissue, and tissue is eosin- or haematoxylin-dominant.
4. Nuclei: haematoxylin smoothed by ``nucleus_smoothing_um``, above ``max(Otsu threshold
   of the tile's tissue, nucleus_od_floor)``, opened by a 3x3 square, 8-connected
   components. Touching nuclei are not split (no watershed): components larger than
   ``nucleus_max_area_um2`` are clusters, counted as their area over the mean single
   nucleus and left out of size and shape statistics.
5. Texture on a grid block-averaged further to about ``texture_mpp`` (2 um: fibres and
   architecture, not chromatin): Sobel gradient magnitude, structure-tensor orientation
   coherence (aligned collagen fibres score high) and difference-of-Gaussians band
   energies, each averaged with weights equal to the tissue coverage of the coarse pixel.

Percentiles are read from a per-tile histogram of 1/256 OD bins (exact to that width)
because a batched sort costs more than the rest of the stain statistics together.

:func:`embed_loop` measures the same things one tile at a time with numpy, scipy and
scikit-image (``skimage.measure.label`` / ``regionprops``, exact ``np.quantile``); it is the
correctness reference for the batched code and the baseline of
``scripts/bench_morphology.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

from pathgen_dagster.lib.selection import findings, nuclei
from pathgen_dagster.lib.selection.facts import (
    DESCRIPTOR_DIM,
    STAIN_HISTOGRAM_BINS,
    STAIN_HISTOGRAM_E_EDGES,
    STAIN_HISTOGRAM_H_EDGES,
    MorphologyFacts,
    facts_from_measurements,
    raw_descriptors,
    standardise,
    without_scale,
)

# Ruifrok & Johnston (2001) stain vectors, rows H, E, DAB in RGB optical density, exactly as
# skimage.color.rgb_from_hed; deconvolution multiplies OD row vectors by the inverse.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# ITU-R 601 luma weights for the grey image that texture is measured on.
LUMA = (0.299, 0.587, 0.114)

# Batched percentiles: OD histogram bins of this width up to this OD (higher is clamped).
PERCENTILE_BIN_OD = 1 / 256
PERCENTILE_MAX_OD = 4.0


@dataclass(frozen=True)
class MeasurementSettings:
    """How tiles are measured; changing a value changes the encoder's output.

    Attributes:
        work_mpp: working resolution in microns per pixel (tiles are area-downsampled).
        texture_mpp: resolution of the texture measurements.
        white_min_lightness: mean RGB / 255 at or above which a pixel may be white space.
        white_max_saturation: (max - min) / max RGB at or below which it is white space.
        nucleus_smoothing_um: Gaussian sigma applied to haematoxylin before thresholding.
        nucleus_od_floor: lowest haematoxylin OD that counts as nuclear, so that a tile
            without nuclei does not get its stroma split in two by Otsu.
        nucleus_min_area_um2: smaller haematoxylin specks are debris, not nuclei.
        nucleus_max_area_um2: larger components are clusters of touching nuclei.
        lymphoid_max_area_um2: a lymphocyte-like nucleus is at most this large ...
        lymphoid_max_eccentricity: ... this round ...
        lymphoid_min_od: ... at least this dark (mean haematoxylin OD), and darker than
            90 % of its tile's tissue pixels, so that stain intensity alone does not decide.
        coherence_sigma_um: window of the structure tensor.
        bandpass_sigmas_um: Gaussian scales whose successive differences give the fine,
            medium and coarse band energies.
    """

    work_mpp: float = 1.0
    texture_mpp: float = 2.0
    white_min_lightness: float = 0.80
    white_max_saturation: float = 0.18
    nucleus_smoothing_um: float = 1.0
    nucleus_od_floor: float = 0.30
    nucleus_min_area_um2: float = 20.0
    nucleus_max_area_um2: float = 300.0
    lymphoid_max_area_um2: float = 65.0
    lymphoid_max_eccentricity: float = 0.85
    lymphoid_min_od: float = 0.55
    coherence_sigma_um: float = 4.0
    bandpass_sigmas_um: tuple[float, float, float, float] = (2.0, 4.0, 8.0, 16.0)


DEFAULT_SETTINGS = MeasurementSettings()


def _with_log_nuclei(measurements: dict[str, float], tile: np.ndarray, mpp: float) -> dict[str, float]:
    """``measurements`` plus the LoG detector's nuclei (count, density per mm2 of tissue)
    and the finding detectors, which reuse those nuclei."""
    detections = nuclei.detect(tile, mpp)
    found = len(detections)
    tissue_mm2 = measurements["tissue_fraction"] * tile.shape[0] * tile.shape[1] * mpp**2 / 1e6
    density = found / tissue_mm2 if tissue_mm2 > 0 else 0.0
    return {
        **measurements,
        "nuclei_count_log": found,
        "nuclei_density_log_per_mm2": density,
        **findings.measure(tile, mpp, detections),
    }


def _pool_factor(mpp: float, target_mpp: float) -> int:
    """The integer block size that brings ``mpp`` closest to ``target_mpp`` (at least 1).

    Integer blocks keep downsampling an exact block mean, cheap in numpy, torch and on a
    GPU alike; the working resolution is then ``mpp * factor`` (0.998 um for 0.499 um/px).
    """
    return max(1, round(target_mpp / mpp))


def _block_mean_tiles(tiles: np.ndarray, factor: int) -> np.ndarray:
    """N x H/f x W/f x C float32 block means of uint8 tiles; a remainder under f is dropped.

    Sums of shifted uint16 views: ~10x faster than a float conversion followed by pooling,
    and exact (the integer sums fit float32).
    """
    n, height, width, channels = tiles.shape
    h, w = height // factor, width // factor
    blocks = tiles[:, : h * factor, : w * factor].reshape(n, h, factor, w, factor, channels)
    accumulator = np.uint16 if 255 * factor * factor < 2**16 else np.uint32
    rows = blocks[:, :, 0].astype(accumulator)
    for i in range(1, factor):
        rows += blocks[:, :, i]
    total = rows[:, :, :, 0].copy()
    for j in range(1, factor):
        total += rows[:, :, :, j]
    return total.astype(np.float32) / (factor * factor)


def _block_mean(images: torch.Tensor, factor: int) -> torch.Tensor:
    """B x H/f x W/f block means of B x H x W images; a remainder under f is dropped."""
    b, height, width = images.shape
    h, w = height // factor, width // factor
    cropped = images[:, : h * factor, : w * factor]
    return cropped.reshape(b, h, factor, w, factor).mean(dim=(2, 4))


def _gaussian_kernel(sigma_px: float) -> np.ndarray:
    # The kernel of scipy.ndimage.gaussian_filter (truncate=4), so the reference agrees.
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_px) ** 2)
    return kernel / kernel.sum()


def _check_tiles(tiles: np.ndarray, mpp: float) -> None:
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(
            f"tiles must be a uint8 array of shape N x H x W x 3, got {tiles.dtype} "
            f"{tiles.shape}; drop the alpha channel of RGBA reads (tile[..., :3])"
        )
    if not mpp > 0:
        raise ValueError(f"mpp must be positive microns per pixel, got {mpp}")


# ---------------------------------------------------------------------------------------
# Batched torch implementation
# ---------------------------------------------------------------------------------------


def unmix_stains(rgb: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W haematoxylin and eosin optical densities of N x 3 x H x W RGB (0-255).

    Ruifrok-Johnston colour deconvolution of OD = log10(255 / I), intensities clamped at 1
    and concentrations at 0: equal to ``6 * skimage.color.rgb2hed(rgb / 255)[..., :2]``
    (the DAB column is not needed).
    """
    od = torch.log10(255.0 / rgb.clamp_min(1.0))
    unmix = torch.as_tensor(HED_FROM_RGB[:, :2], dtype=od.dtype, device=od.device)
    return torch.einsum("nchw,cs->nshw", od, unmix).clamp_min(0)


@lru_cache(maxsize=32)
def _blur_operator(size: int, sigma_px: float) -> np.ndarray:
    """size x size matrix that Gaussian-blurs a vector, borders mirrored (scipy 'mirror')."""
    kernel = _gaussian_kernel(sigma_px)
    radius = len(kernel) // 2
    period = max(2 * (size - 1), 1)
    operator = np.zeros((size, size))
    for offset, weight in zip(range(-radius, radius + 1), kernel, strict=True):
        # Reflect about the edge pixels (d c b | a b c d) as often as the kernel overhangs.
        source = np.abs(np.arange(size) + offset) % period
        source = np.where(source >= size, period - source, source)
        np.add.at(operator, (np.arange(size), source), weight)
    return operator


def _blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Images (... x H x W) Gaussian-blurred like scipy.ndimage.gaussian_filter(mode="mirror").

    Two matrix products with banded blur operators instead of convolutions: BLAS applies
    a 336 x 336 operator faster than torch's CPU convolution applies a 33-tap kernel, the
    mirrored borders are folded into the operator exactly, and GPUs like matmuls.
    """
    height, width = images.shape[-2:]

    def operator(size: int) -> torch.Tensor:
        return torch.as_tensor(
            _blur_operator(size, sigma_px), dtype=images.dtype, device=images.device
        )

    return operator(height) @ images @ operator(width).T


def _sobel(grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dx, d/dy) of ... x H x W images, as scipy.ndimage.sobel(mode="mirror")."""
    p = F.pad(grey, (1, 1, 1, 1), mode="reflect")
    smooth_down = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    smooth_across = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]
    return (
        smooth_down[..., 2:] - smooth_down[..., :-2],
        smooth_across[..., 2:, :] - smooth_across[..., :-2, :],
    )


def _max3x3(values: torch.Tensor, fill: float | int) -> torch.Tensor:
    """3x3 maximum filter of B x H x W values; ``fill`` stands for pixels outside the tile.

    Separable maxima of shifted slices: several times faster on CPU than max_pool2d, works
    on integer tensors, and is as fast on a GPU.
    """
    p = F.pad(values, (1, 1, 1, 1), value=fill)
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _open3(mask: torch.Tensor) -> torch.Tensor:
    """B x H x W masks opened by a 3x3 square, as skimage.morphology.binary_opening.

    Erosion counts pixels outside the tile as foreground and dilation as background, so
    objects touching the border are not eroded away.
    """
    as_int = mask.to(torch.int8)
    eroded = -_max3x3(-as_int, fill=-1)
    return _max3x3(eroded, fill=0) > 0


def _label_propagate(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of B x H x W masks by parallel label propagation (for GPUs).

    Returns int64 B x H x W: each foreground pixel holds the smallest flat batch index of
    its component's pixels, background holds B * H * W. Labels start as the first pixel of
    each horizontal run (a cumulative max), so the passes only have to join runs. Each
    pass (1) takes the smallest label among the 3x3 neighbours, (2) hooks: the pixel a
    label names takes the smallest label seen by any pixel naming it, and (3) jumps: a
    pixel takes the label of the pixel its label names. A label always names a pixel of
    its own component and never grows, so the passes stop when nothing changes; hooking
    and jumping need about ten passes where spreading alone needs as many as a component
    is long.
    """
    b, h, w = mask.shape
    size = b * h * w
    index = torch.arange(size, device=mask.device).view(b, h, w)
    run_starts = mask & ~F.pad(mask, (1, 0))[..., :-1]
    labels = torch.where(run_starts, index, 0).cummax(dim=2).values
    labels = torch.where(mask, labels, size).view(-1)
    background = torch.tensor([size], device=mask.device)
    while True:
        spread = -_max3x3(-labels.view(b, h, w), fill=-size).view(-1)
        spread = torch.where(mask.view(-1), spread, size)
        # One extra slot at the end absorbs what background pixels (label == size) write.
        hooked = torch.cat([labels, background]).scatter_reduce(0, labels, spread, "amin")
        updated = torch.minimum(spread, hooked[:-1])
        updated = torch.minimum(updated, torch.cat([updated, background])[updated])
        if torch.equal(updated, labels):
            return labels.view(b, h, w)
        labels = updated


def _components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(component of each pixel, tile of each component) for B x H x W masks.

    Components are 8-connected and numbered 0..k-1 across the batch in raster order of
    their first pixel; background pixels hold -1. On CPU each tile is labelled by
    scipy.ndimage.label, a C two-pass algorithm ~50x faster there than any iterative
    tensor method (the one step of the batch that runs per tile); on other devices the
    batched :func:`_label_propagate` runs. Both give the same numbering.
    """
    if mask.device.type == "cpu":
        return _components_scipy(mask)
    return _components_propagate(mask)


def _components_scipy(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    eight = np.ones((3, 3), dtype=bool)
    labelled = [ndi.label(tile, structure=eight) for tile in mask.numpy()]
    counts = torch.tensor([count for _, count in labelled], dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    labels = torch.from_numpy(np.stack([lab for lab, _ in labelled])).long()
    labels = torch.where(labels > 0, labels - 1 + offsets[:, None, None], -1)
    return labels, torch.repeat_interleave(torch.arange(mask.shape[0]), counts)


def _components_propagate(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w = mask.shape
    roots = _label_propagate(mask).view(-1)
    is_root = roots == torch.arange(roots.numel(), device=mask.device)
    number = torch.cat([is_root.long().cumsum(0) - 1, torch.tensor([-1], device=mask.device)])
    tile = torch.nonzero(is_root)[:, 0] // (h * w)
    return number[roots].view(b, h, w), tile


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row weighted mean of B x P values (weights B x P, e.g. a 0/1 mask); 0 if no weight."""
    total = weights.sum(1)
    return torch.einsum("bp,bp->b", values, weights) / total.clamp_min(1e-12)


def _masked_std(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    mean = _masked_mean(values, weights)
    return _masked_mean((values - mean[:, None]) ** 2, weights).sqrt()


def _bincount_rows(bins: torch.Tensor, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
    """B x n_bins counts of the masked entries of B x P integer bins, one histogram per row."""
    rows = bins.shape[0]
    offset = torch.arange(rows, device=bins.device)[:, None] * n_bins
    # The mask as 0/1 weights: cheaper than compacting the entries with a boolean index.
    return torch.bincount(
        (bins + offset).view(-1), weights=mask.reshape(-1).double(), minlength=rows * n_bins
    ).view(rows, n_bins)


def _masked_percentiles(
    values: torch.Tensor, mask: torch.Tensor, fractions: tuple[float, ...]
) -> torch.Tensor:
    """len(fractions) x B percentiles of masked B x P values >= 0, from 1/256 OD bins.

    The value at rank q * (n - 1) (np.quantile's linear rule) is placed uniformly inside
    the bin that holds it: within one bin of np.quantile where values are dense, within the
    gap between neighbouring values where they are sparse. 0 for a row without values.
    """
    n_bins = round(PERCENTILE_MAX_OD / PERCENTILE_BIN_OD)
    bins = (values / PERCENTILE_BIN_OD).long().clamp(0, n_bins - 1)
    counts = _bincount_rows(bins, mask, n_bins)
    cumulative = counts.cumsum(1)
    total = cumulative[:, -1]
    rows = []
    for fraction in fractions:
        rank = fraction * (total - 1).clamp_min(0)
        holder = torch.searchsorted(cumulative, rank[:, None], right=True).clamp_max(n_bins - 1)
        in_bin = counts.gather(1, holder)[:, 0]
        before = cumulative.gather(1, holder)[:, 0] - in_bin
        position = (rank - before + 0.5) / in_bin.clamp_min(1)
        value = (holder[:, 0] + position) * PERCENTILE_BIN_OD
        rows.append(torch.where(total > 0, value, 0.0))
    return torch.stack(rows)


def _otsu(values: torch.Tensor, mask: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Per-row Otsu threshold of masked B x P values, as skimage.filters.threshold_otsu.

    +inf for a row without masked values, the value itself for a constant row.
    """
    big = torch.finfo(values.dtype).max
    low = torch.where(mask, values, big).amin(1)
    high = torch.where(mask, values, -big).amax(1)
    span = (high - low).clamp_min(1e-12)
    index = ((values - low[:, None]) / span[:, None] * bins).floor().clamp(0, bins - 1).long()
    counts = _bincount_rows(index, mask, bins)
    step = span[:, None].double() / bins
    centres = low[:, None].double() + (torch.arange(bins, device=values.device) + 0.5) * step
    weight_low = counts.cumsum(1)
    weight_high = counts.flip(1).cumsum(1).flip(1)
    mean_low = (counts * centres).cumsum(1) / weight_low.clamp_min(1)
    mean_high = (counts * centres).flip(1).cumsum(1).flip(1) / weight_high.clamp_min(1)
    between = weight_low[:, :-1] * weight_high[:, 1:] * (mean_low[:, :-1] - mean_high[:, 1:]) ** 2
    threshold = centres.gather(1, between.argmax(1, keepdim=True))[:, 0].to(values.dtype)
    threshold = torch.where(high > low, threshold, low)
    return torch.where(mask.any(1), threshold, torch.full_like(threshold, float("inf")))


def _nucleus_measurements(
    components: torch.Tensor,
    tile: torch.Tensor,
    haematoxylin: torch.Tensor,
    dark_od: torch.Tensor,
    work_mpp: float,
    settings: MeasurementSettings,
) -> dict[str, torch.Tensor]:
    """Per-tile nuclear statistics of the components of :func:`_components`.

    Args:
        components: B x H x W component number of each pixel, -1 for background.
        tile: tile of each component.
        haematoxylin: B x H x W haematoxylin OD.
        dark_od: each tile's 90th percentile of tissue haematoxylin: a lymphocyte-like
            nucleus must be darker than that.
        work_mpp: microns per pixel of the working grid.
        settings: size and lymphocyte thresholds.
    """
    b, h, w = components.shape
    flat = components.view(-1)
    foreground = flat >= 0
    component = flat[foreground]
    k = tile.numel()
    position = torch.nonzero(foreground)[:, 0] % (h * w)
    rows, cols = (position // w).double(), (position % w).double()

    def total(weights: torch.Tensor | None = None) -> torch.Tensor:
        return torch.bincount(component, weights=weights, minlength=k).double()

    area_px = total()
    mean_r, mean_c = total(rows) / area_px, total(cols) / area_px
    var_r = total(rows * rows) / area_px - mean_r**2
    var_c = total(cols * cols) / area_px - mean_c**2
    cov = total(rows * cols) / area_px - mean_r * mean_c
    # Eigenvalues of the coordinate covariance, as regionprops' inertia tensor.
    half_sum = (var_r + var_c) / 2
    root = (((var_r - var_c) / 2) ** 2 + cov**2).sqrt()
    major, minor = half_sum + root, (half_sum - root).clamp_min(0)
    eccentricity = torch.where(major > 0, (1 - minor / major.clamp_min(1e-12)).sqrt(), 0.0)
    darkness = total(haematoxylin.reshape(-1)[foreground].double()) / area_px
    area_um2 = area_px * work_mpp**2

    nuclear = area_um2 >= settings.nucleus_min_area_um2
    single = nuclear & (area_um2 <= settings.nucleus_max_area_um2)
    cluster = nuclear & ~single
    lymphoid = (
        single
        & (area_um2 <= settings.lymphoid_max_area_um2)
        & (eccentricity <= settings.lymphoid_max_eccentricity)
        & (darkness >= settings.lymphoid_min_od)
        & (darkness >= dark_od.double()[tile])
    )

    def per_tile(weights: torch.Tensor) -> torch.Tensor:
        return torch.bincount(tile, weights=weights.double(), minlength=b)

    singles = per_tile(single)
    some = singles.clamp_min(1)
    area_mean = per_tile(single * area_um2) / some
    area_std = (per_tile(single * area_um2**2) / some - area_mean**2).clamp_min(0).sqrt()
    log_area = area_um2.clamp_min(1e-12).log()
    log_mean = per_tile(single * log_area) / some
    log_sd = (per_tile(single * log_area**2) / some - log_mean**2).clamp_min(0).sqrt()
    unit = torch.where(singles > 0, area_mean, settings.nucleus_max_area_um2)
    return {
        "nuclei_count": singles + per_tile(cluster * area_um2) / unit,
        "nuclear_area_mean_um2": area_mean,
        "nuclear_area_std_um2": area_std,
        "nuclear_area_cv": torch.where(singles > 0, area_std / area_mean.clamp_min(1e-12), 0.0),
        "nuclear_area_log_sd": log_sd,
        "nuclear_eccentricity_mean": per_tile(single * eccentricity) / some,
        "nuclear_haematoxylin_od_mean": per_tile(single * darkness * area_px)
        / per_tile(single * area_px).clamp_min(1),
        "nuclear_px": per_tile(nuclear * area_px),
        "lymphoid_count": per_tile(lymphoid),
    }


def _texture_measurements(
    grey: torch.Tensor, coverage: torch.Tensor, texture_mpp: float, settings: MeasurementSettings
) -> dict[str, torch.Tensor]:
    """Per-tile texture statistics of B x H x W grey images, weighted by tissue coverage."""
    n = grey.shape[0]
    weights = coverage.reshape(n, -1)
    gx, gy = _sobel(grey)
    magnitude = torch.hypot(gx, gy).reshape(n, -1)
    tensor = _blur(
        torch.stack([gx * gx, gy * gy, gx * gy], 1), settings.coherence_sigma_um / texture_mpp
    )
    jxx, jyy, jxy = tensor.unbind(1)
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9)
    out = {
        "gradient_mean": _masked_mean(magnitude, weights),
        "gradient_std": _masked_std(magnitude, weights),
        "orientation_coherence": _masked_mean(coherence.reshape(n, -1), weights),
    }
    blurred = [_blur(grey, s / texture_mpp).reshape(n, -1) for s in settings.bandpass_sigmas_um]
    for name, (fine, coarse) in zip(("fine", "medium", "coarse"), pairwise(blurred), strict=True):
        out[f"bandpass_energy_{name}"] = _masked_mean((fine - coarse).abs(), weights)
    return out


def _measure_batch(
    tiles: np.ndarray, mpp: float, settings: MeasurementSettings, device: str
) -> tuple[list[dict[str, float]], np.ndarray]:
    """Measurements (one dict per tile) and N x 16 stain histograms of one batch."""
    n, height, width, _ = tiles.shape
    factor = _pool_factor(mpp, settings.work_mpp)
    work_mpp = mpp * factor
    # Downsampled on the host: the float32 block means are no more bytes than the uint8
    # tile (factor >= 2), so a GPU receives no more data, and numpy beats torch's CPU ops.
    rgb = torch.from_numpy(_block_mean_tiles(tiles, factor)).to(device).permute(0, 3, 1, 2)
    work_h, work_w = rgb.shape[-2:]

    haematoxylin, eosin = unmix_stains(rgb).unbind(1)
    brightest = rgb.amax(1)
    saturation = (brightest - rgb.amin(1)) / brightest.clamp_min(1.0)
    white = (rgb.mean(1) >= 255.0 * settings.white_min_lightness) & (
        saturation <= settings.white_max_saturation
    )
    tissue = ~white
    flat_tissue = tissue.view(n, -1)
    tissue_weight = flat_tissue.float()
    tissue_px = flat_tissue.sum(1).double()

    flat_h, flat_e = haematoxylin.reshape(n, -1).contiguous(), eosin.reshape(n, -1).contiguous()
    out: dict[str, torch.Tensor] = {
        "tissue_fraction": tissue_px / (work_h * work_w),
        "white_fraction": 1 - tissue_px / (work_h * work_w),
        "eosin_fraction": _masked_mean((flat_e > flat_h).float(), tissue_weight),
        "haematoxylin_fraction": _masked_mean((flat_h >= flat_e).float(), tissue_weight),
    }
    for stain, values in (("haematoxylin", flat_h), ("eosin", flat_e)):
        out[f"{stain}_od_mean"] = _masked_mean(values, tissue_weight)
        out[f"{stain}_od_std"] = _masked_std(values, tissue_weight)
        percentiles = _masked_percentiles(values, flat_tissue, (0.1, 0.5, 0.9))
        for pct, value in zip((10, 50, 90), percentiles, strict=True):
            out[f"{stain}_od_p{pct}"] = value

    smoothed = _blur(haematoxylin, settings.nucleus_smoothing_um / work_mpp)
    threshold = _otsu(smoothed.reshape(n, -1), flat_tissue).clamp_min(settings.nucleus_od_floor)
    nuclear_mask = _open3((smoothed > threshold[:, None, None]) & tissue)
    nuclei = _nucleus_measurements(
        *_components(nuclear_mask), haematoxylin, out["haematoxylin_od_p90"], work_mpp, settings
    )
    nuclear_px, lymphoid_count = nuclei.pop("nuclear_px"), nuclei.pop("lymphoid_count")
    out.update(nuclei)
    tissue_mm2 = (tissue_px * work_mpp**2 / 1e6).clamp_min(1e-12)
    has_tissue = tissue_px > 0
    out["nuclei_density_per_mm2"] = torch.where(has_tissue, nuclei["nuclei_count"] / tissue_mm2, 0)
    out["lymphoid_density_per_mm2"] = torch.where(has_tissue, lymphoid_count / tissue_mm2, 0)
    out["lymphoid_fraction"] = lymphoid_count / nuclei["nuclei_count"].clamp_min(1)
    out["nuclear_fraction"] = nuclear_px / tissue_px.clamp_min(1)
    out["nc_ratio_proxy"] = nuclear_px / (tissue_px - nuclear_px).clamp_min(1)

    grey = torch.einsum("nchw,c->nhw", rgb, torch.tensor(LUMA, device=rgb.device)) / 255.0
    texture_factor = _pool_factor(work_mpp, settings.texture_mpp)
    grey = _block_mean(grey, texture_factor)
    coverage = _block_mean(tissue.float(), texture_factor)
    out.update(_texture_measurements(grey, coverage, work_mpp * texture_factor, settings))

    h_bin = torch.bucketize(
        flat_h, torch.tensor(STAIN_HISTOGRAM_H_EDGES, device=rgb.device), out_int32=True, right=True
    )
    e_bin = torch.bucketize(
        flat_e, torch.tensor(STAIN_HISTOGRAM_E_EDGES, device=rgb.device), out_int32=True, right=True
    )
    joint = (h_bin * (len(STAIN_HISTOGRAM_E_EDGES) + 1) + e_bin).long()
    histogram = _bincount_rows(joint, flat_tissue, STAIN_HISTOGRAM_BINS)
    histogram = histogram / tissue_px.clamp_min(1)[:, None]

    columns = {name: value.double().cpu().numpy() for name, value in out.items()}
    shared = {"mpp_um": mpp, "field_width_um": width * mpp}
    measurements = [
        {**shared, **{name: float(values[i]) for name, values in columns.items()}} for i in range(n)
    ]
    return measurements, histogram.cpu().numpy()


def measure(
    tiles: np.ndarray,
    mpp: float,
    *,
    settings: MeasurementSettings = DEFAULT_SETTINGS,
    device: str = "cpu",
    batch_size: int = 16,
) -> tuple[list[MorphologyFacts], np.ndarray]:
    """Facts per tile and raw N x DESCRIPTOR_DIM descriptors, measured in torch batches.

    Args:
        tiles: uint8 N x H x W x 3 RGB tiles, all of one size and magnification.
        mpp: microns per pixel of ``tiles``.
        settings: measurement thresholds and scales.
        device: torch device, e.g. "cpu" or "cuda".
        batch_size: tiles per torch batch; bounds memory (~25 MB per 672 px tile at 20x).
    """
    _check_tiles(tiles, mpp)
    facts: list[MorphologyFacts] = []
    histograms = [np.zeros((0, STAIN_HISTOGRAM_BINS))]
    with torch.inference_mode():
        for start in range(0, len(tiles), batch_size):
            measurements, histogram = _measure_batch(
                tiles[start : start + batch_size], mpp, settings, device
            )
            batch = tiles[start : start + batch_size]
            facts.extend(
                facts_from_measurements(_with_log_nuclei(m, t, mpp))
                for m, t in zip(measurements, batch, strict=True)
            )
            histograms.append(histogram)
    return facts, raw_descriptors(facts, np.concatenate(histograms))


# ---------------------------------------------------------------------------------------
# One-tile-at-a-time reference (numpy / scipy / scikit-image)
# ---------------------------------------------------------------------------------------


def _block_mean_numpy(image: np.ndarray, factor: int) -> np.ndarray:
    """H/f x W/f (x C) block means of one image; a remainder under f is dropped."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))


def _otsu_numpy(values: np.ndarray) -> float:
    if values.size == 0:
        return float("inf")
    if values.min() == values.max():
        return float(values.min())
    return float(threshold_otsu(values))


def _weighted_stats(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    total = weights.sum()
    if total == 0:
        return 0.0, 0.0
    mean = float((values * weights).sum() / total)
    return mean, float(np.sqrt(((values - mean) ** 2 * weights).sum() / total))


def _measure_tile(
    tile: np.ndarray, mpp: float, settings: MeasurementSettings
) -> tuple[dict[str, float], np.ndarray]:
    """Measurements and stain histogram of one tile, computed the plain way."""
    height, width, _ = tile.shape
    factor = _pool_factor(mpp, settings.work_mpp)
    work_mpp = mpp * factor
    rgb = _block_mean_numpy(tile.astype(np.float64), factor)
    # skimage's OD is ln(I) / ln(1e-6) = log10(I) / -6: scale back to log10 OD units.
    hed = np.maximum(rgb2hed(np.maximum(rgb, 1.0) / 255.0) * 6.0, 0)
    haematoxylin, eosin = hed[..., 0], hed[..., 1]
    saturation = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1.0)
    tissue = ~(
        (rgb.mean(-1) >= 255.0 * settings.white_min_lightness)
        & (saturation <= settings.white_max_saturation)
    )
    tissue_px = int(tissue.sum())
    tissue_mm2 = tissue_px * work_mpp**2 / 1e6
    weight = tissue.astype(np.float64)
    out: dict[str, float] = {
        "mpp_um": mpp,
        "field_width_um": width * mpp,
        "tissue_fraction": tissue_px / tissue.size,
        "white_fraction": 1 - tissue_px / tissue.size,
        "eosin_fraction": _weighted_stats(eosin > haematoxylin, weight)[0],
        "haematoxylin_fraction": _weighted_stats(haematoxylin >= eosin, weight)[0],
    }
    for stain, values in (("haematoxylin", haematoxylin), ("eosin", eosin)):
        out[f"{stain}_od_mean"], out[f"{stain}_od_std"] = _weighted_stats(values, weight)
        for pct in (10, 50, 90):
            inside = values[tissue]
            out[f"{stain}_od_p{pct}"] = float(np.quantile(inside, pct / 100)) if tissue_px else 0.0

    smoothed = ndi.gaussian_filter(
        haematoxylin, settings.nucleus_smoothing_um / work_mpp, mode="mirror"
    )
    threshold = max(_otsu_numpy(smoothed[tissue]), settings.nucleus_od_floor)
    square = np.ones((3, 3), dtype=bool)
    # skimage's binary_opening: erosion counts outside as foreground, dilation as background.
    eroded = ndi.binary_erosion((smoothed > threshold) & tissue, square, border_value=1)
    nuclear_mask = ndi.binary_dilation(eroded, square, border_value=0)
    regions = regionprops(label(nuclear_mask, connectivity=2), intensity_image=haematoxylin)
    pixel_um2 = work_mpp**2
    nuclear = [r for r in regions if r.area * pixel_um2 >= settings.nucleus_min_area_um2]
    singles = [r for r in nuclear if r.area * pixel_um2 <= settings.nucleus_max_area_um2]
    clusters = [r for r in nuclear if r.area * pixel_um2 > settings.nucleus_max_area_um2]
    areas = np.array([r.area * pixel_um2 for r in singles])
    eccentricity = np.array([r.eccentricity for r in singles])
    darkness = np.array([r.intensity_mean for r in singles])
    unit = areas.mean() if singles else settings.nucleus_max_area_um2
    count = len(singles) + sum(r.area * pixel_um2 for r in clusters) / unit
    lymphoid = int(
        np.sum(
            (areas <= settings.lymphoid_max_area_um2)
            & (eccentricity <= settings.lymphoid_max_eccentricity)
            & (darkness >= settings.lymphoid_min_od)
            & (darkness >= out["haematoxylin_od_p90"])
        )
    )
    nuclear_px = float(sum(r.area for r in nuclear))
    if singles:
        out["nuclear_area_mean_um2"] = float(areas.mean())
        out["nuclear_area_std_um2"] = float(areas.std())
        out["nuclear_area_cv"] = float(areas.std() / areas.mean())
        out["nuclear_area_log_sd"] = float(np.log(areas).std())
        out["nuclear_eccentricity_mean"] = float(eccentricity.mean())
        out["nuclear_haematoxylin_od_mean"] = float(np.sum(darkness * areas) / np.sum(areas))
    else:
        for name in (
            "nuclear_area_mean_um2",
            "nuclear_area_std_um2",
            "nuclear_area_cv",
            "nuclear_area_log_sd",
            "nuclear_eccentricity_mean",
            "nuclear_haematoxylin_od_mean",
        ):
            out[name] = 0.0
    out.update(
        {
            "nuclei_count": count,
            "nuclei_density_per_mm2": count / tissue_mm2 if tissue_px else 0.0,
            "lymphoid_density_per_mm2": lymphoid / tissue_mm2 if tissue_px else 0.0,
            "lymphoid_fraction": lymphoid / max(count, 1),
            "nuclear_fraction": nuclear_px / max(tissue_px, 1),
            "nc_ratio_proxy": nuclear_px / max(tissue_px - nuclear_px, 1),
        }
    )

    grey = rgb @ np.array(LUMA) / 255.0
    texture_factor = _pool_factor(work_mpp, settings.texture_mpp)
    texture_mpp = work_mpp * texture_factor
    grey = _block_mean_numpy(grey, texture_factor)
    coverage = _block_mean_numpy(weight, texture_factor)
    gx, gy = ndi.sobel(grey, axis=1, mode="mirror"), ndi.sobel(grey, axis=0, mode="mirror")
    out["gradient_mean"], out["gradient_std"] = _weighted_stats(np.hypot(gx, gy), coverage)
    sigma = settings.coherence_sigma_um / texture_mpp
    jxx, jyy, jxy = (
        ndi.gaussian_filter(a, sigma, mode="mirror") for a in (gx * gx, gy * gy, gx * gy)
    )
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9)
    out["orientation_coherence"] = _weighted_stats(coherence, coverage)[0]
    blurred = [
        ndi.gaussian_filter(grey, s / texture_mpp, mode="mirror")
        for s in settings.bandpass_sigmas_um
    ]
    for name, (fine, coarse) in zip(("fine", "medium", "coarse"), pairwise(blurred), strict=True):
        out[f"bandpass_energy_{name}"] = _weighted_stats(np.abs(fine - coarse), coverage)[0]

    h_bin = np.digitize(haematoxylin[tissue], STAIN_HISTOGRAM_H_EDGES)
    e_bin = np.digitize(eosin[tissue], STAIN_HISTOGRAM_E_EDGES)
    joint = h_bin * (len(STAIN_HISTOGRAM_E_EDGES) + 1) + e_bin
    histogram = np.bincount(joint, minlength=STAIN_HISTOGRAM_BINS) / max(tissue_px, 1)
    return out, histogram


def measure_loop(
    tiles: np.ndarray, mpp: float, *, settings: MeasurementSettings = DEFAULT_SETTINGS
) -> tuple[list[MorphologyFacts], np.ndarray]:
    """Facts and raw descriptors like :func:`measure`, one tile at a time without torch."""
    _check_tiles(tiles, mpp)
    measured = [_measure_tile(tile, mpp, settings) for tile in tiles]
    histograms = np.array([h for _, h in measured]).reshape(len(tiles), STAIN_HISTOGRAM_BINS)
    facts = [
        facts_from_measurements(_with_log_nuclei(m, t, mpp))
        for (m, _), t in zip(measured, tiles, strict=True)
    ]
    return facts, raw_descriptors(facts, histograms)


def embed_loop(
    tiles: np.ndarray, mpp: float, *, settings: MeasurementSettings = DEFAULT_SETTINGS
) -> tuple[np.ndarray, list[MorphologyFacts]]:
    """(N x DESCRIPTOR_DIM embeddings, facts) computed naively: the reference and baseline.

    Args:
        tiles: uint8 N x H x W x 3 RGB tiles of one size, read at ``mpp``.
        mpp: microns per pixel of the tiles.
        settings: measurement thresholds and scales.
    """
    facts, raw = measure_loop(tiles, mpp, settings=settings)
    return standardise(raw), facts


class MorphologyEncoder:
    """Weight-free image encoder: embeddings and facts from measured H&E morphology.

    Attributes:
        encoder_id: version tag recorded with every embedding; bump it when the
            measurements, :data:`BANDS` or the reference statistics change.
        dim: length of the embedding (see :data:`DESCRIPTOR_COMPONENTS`).
    """

    encoder_id = "morphology-v2"
    # Near-duplicate cosine of THIS embedding, measured by scripts/calibrate_dedup.py on
    # 127 CMU skin patches (448 px at 0.499 um/px) and 36 tiatoolbox carcinoma patches
    # (448 px at its ~0.25 um/px): the 5th percentile of re-scan copies (flips 1.000, 8 um
    # shifts median 0.986, JPEG q75 median 0.978) is 0.929; different-tissue pairs reach at
    # most 0.722; 3.3 % of pairs of distinct fields of one tissue score above it. (0.935
    # until the carcinoma was measured at its own scale, not as 0.5 um/px.) PathGen's 0.88
    # belongs to CLIP features: on this vector it merges distinct fields of one tissue
    # (issue 10).
    dedup_threshold = 0.929
    dim = DESCRIPTOR_DIM

    def __init__(
        self,
        *,
        settings: MeasurementSettings = DEFAULT_SETTINGS,
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        self.settings = settings
        self.device = device
        self.batch_size = batch_size

    def embed(
        self, tiles: np.ndarray, mpp: float | None, *, mpp_source: str = "slide"
    ) -> tuple[np.ndarray, list[MorphologyFacts]]:
        """(N x dim float32 L2-normalised embeddings, one MorphologyFacts per tile).

        Args:
            tiles: uint8 N x H x W x 3 RGB tiles of one size, read at ``mpp``.
            mpp: microns per pixel of the tiles (level 0 of the slide for 672 px tiles),
                or None when nobody knows it: the tiles are then measured on their own
                pixel grid (no downsampling, micron thresholds read as working pixels),
                the embedding compares tiles of that slide only, and the facts carry no
                physical measure (:func:`without_scale`). No scale is ever assumed.
            mpp_source: where ``mpp`` came from ("slide" or "config"), kept in the facts.
        """
        if mpp is None:
            facts, raw = measure(
                tiles,
                self.settings.work_mpp,
                settings=self.settings,
                device=self.device,
                batch_size=self.batch_size,
            )
            return standardise(raw), [without_scale(f) for f in facts]
        facts, raw = measure(
            tiles, mpp, settings=self.settings, device=self.device, batch_size=self.batch_size
        )
        if mpp_source != "slide":
            facts = [replace(f, mpp_source=mpp_source) for f in facts]
        return standardise(raw), facts

