"""Tissue detection and the tile grid: which level-0 grid cells of a slide hold tissue.

Method. A thumbnail at 1/64 of level 0 (CLAM's segmentation scale, as PathGen used; finer
on small slides so that the thumbnail keeps at least ``mask_min_side_px`` pixels) is built
region by region from the coarsest pyramid level that is not coarser than it, each region
block-averaged in uint8 arithmetic, so memory is bounded by ``max_read_mb`` whatever the
pyramid (a 40k x 40k single-level file needs no more than a 2k x 2k one). Saturation and
value (HSV's S and V, in uint8) are median-filtered and thresholded with Otsu's method (never
below ``min_saturation``, so an all-glass slide yields an empty mask instead of thresholding
noise); very dark pixels (pen marks, scanner edges) are excluded; the mask is closed, small
specks removed and small holes filled. Each grid cell's tissue fraction on the thumbnail
comes from an integral image; every cell above ``candidate_fraction`` is then read once at
the level nearest ``quality_downsample`` (1/8), where its tissue fraction is measured again
with the same threshold (on level 0 when it lies near the keep threshold) and its blur and
saturation are measured. A cell is kept when that
finer fraction is above ``min_tissue_fraction``: the thumbnail only prunes glass, the finer
read decides, which is what keeps borderline cells (50-70 % tissue) that a coarse mask
drops while never keeping a cell at or below 50 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage
from skimage import color, filters, morphology

from pathgen_dagster.lib.ingest.wsi import composite_on_white, read_rgb

# Bytes a read region costs at its peak per pixel: OpenSlide's RGBA buffer, Pillow's image of
# it and the array numpy makes from that (4 each), then the RGB copies (3-4 each); 15-22
# measured as the rise of peak RSS (VmHWM) over reads of 1k-3k px squares.
_BYTES_PER_READ_PIXEL = 22
# A thumbnail level is read in strips of at most this many MB (max_read_mb when smaller): a read
# briefly holds its pixels several times over, the thumbnail keeps only 1/factor^2 of them.
_THUMBNAIL_STRIP_MB = 4
# Whole-thumbnail temporaries (histogram, component sizes and lookups) go this many pixels
# at a time: numpy turns uint8 and int32 indices into an 8-byte copy of the whole array.
_BLOCK_PX = 1 << 18


@dataclass(frozen=True)
class TilingConfig:
    """How a slide is cut into tiles; every default is PathGen's (CLAM's) or stated.

    Attributes:
        tile_size_px: tile side in level-0 pixels (PathGen: 672).
        tile_size_um: tile side in microns; when set it wins over ``tile_size_px`` and is
            converted with the slide's microns per pixel (672 px is 168 um at 40x).
        min_tissue_fraction: keep a tile when its tissue fraction is strictly above this.
        mask_downsample: coarsest thumbnail scale for the tissue mask (CLAM: 1/64).
        mask_min_side_px: the thumbnail's shorter side is at least this (small slides).
        min_saturation: lowest saturation threshold (0-1) Otsu may choose.
        min_object_fraction: specks smaller than this fraction of a tile are removed.
        candidate_fraction: cells above this thumbnail tissue fraction are measured finely.
        quality_downsample: downsample at which candidate tiles are read and measured.
        exact_band: a cell whose fraction there lies within this of ``min_tissue_fraction``
            is measured once more on its level-0 pixels (averaging blurs tissue edges into
            glass, so a 46 % cell can read as 52 % at 1/4).
        max_read_mb: the most memory one region read may take; thumbnails are assembled
            from regions of at most this size, so a slide's peak memory does not grow
            with its size.
    """

    tile_size_px: int = 672
    tile_size_um: float | None = None
    min_tissue_fraction: float = 0.5
    mask_downsample: int = 64
    mask_min_side_px: int = 256
    min_saturation: float = 0.05
    min_object_fraction: float = 0.05
    candidate_fraction: float = 0.02
    exact_band: float = 0.1
    quality_downsample: int = 8
    max_read_mb: int = 64


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide at ``downsample`` of level 0."""

    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: float
    saturation_threshold: float

    @property
    def threshold_u8(self) -> int:
        """The saturation threshold on the uint8 scale (a pixel is tissue when above it)."""
        return int(round(self.saturation_threshold * 255))


@dataclass(frozen=True)
class TileGrid:
    """The kept tiles of one slide: level-0 corners, side, tissue fractions, quality."""

    xs: np.ndarray
    ys: np.ndarray
    size_px: int
    tissue_fraction: np.ndarray
    grid_cells: int
    blur_variance: np.ndarray
    mean_saturation: np.ndarray
    candidates: int = 0

    def __len__(self) -> int:
        return len(self.xs)


class TileSizeError(ValueError):
    """The requested tile size cannot be applied to this slide."""


class ReadBudgetError(ValueError):
    """A region read would exceed the per-read memory budget."""


def tile_side_px(config: TilingConfig, mpp: float | None) -> int:
    """Tile side in level-0 pixels, converting a physical size with the slide's mpp."""
    if config.tile_size_um is None:
        return config.tile_size_px
    if not mpp:
        raise TileSizeError(
            f"tile_size_um={config.tile_size_um} needs the slide's microns per pixel, "
            "which it does not record; set tile_size_px instead"
        )
    return max(1, round(config.tile_size_um / mpp))


def thumbnail_downsample(width: int, height: int, config: TilingConfig) -> float:
    """The mask's scale: ``mask_downsample``, finer when the slide is small."""
    return max(1.0, min(float(config.mask_downsample), min(width, height) / config.mask_min_side_px))


def read_thumbnail(
    slide: openslide.OpenSlide, downsample: float, *, max_read_mb: int = TilingConfig.max_read_mb
) -> tuple[np.ndarray, float]:
    """RGB uint8 thumbnail at about ``downsample`` of level 0, and its exact downsample.

    The coarsest level not coarser than ``downsample`` is read in regions of at most
    ``max_read_mb`` (strips of a few MB where the level's downsample is whole) and each
    region is block-averaged by the integer factor that brings it to the thumbnail's scale;
    no full-level array ever exists.
    """
    level = slide.get_best_level_for_downsample(downsample)
    level_downsample = float(slide.level_downsamples[level])
    factor = max(1, int(downsample / level_downsample + 1e-6))
    level_width, level_height = slide.level_dimensions[level]
    out_width, out_height = math.ceil(level_width / factor), math.ceil(level_height / factor)
    budget_px = max(1, (max_read_mb << 20) // _BYTES_PER_READ_PIXEL)
    if factor * factor > budget_px:
        raise ReadBudgetError(
            f"one {factor}x{factor} block does not fit in max_read_mb={max_read_mb}; raise it"
        )
    strip_px = budget_px
    if abs(level_downsample - round(level_downsample)) < 1e-9:
        # Small strips hold the same pixels as one read only on a level whose downsample is
        # whole: elsewhere OpenSlide resamples a region that starts between two of the
        # level's pixels, so such a level keeps the fewest regions max_read_mb allows.
        strip_px = max(factor * factor, min(budget_px, (_THUMBNAIL_STRIP_MB << 20) // _BYTES_PER_READ_PIXEL))
    chunk_w = min(out_width, max(1, strip_px // (factor * factor))) * factor
    chunk_h = max(1, strip_px // chunk_w // factor) * factor
    thumbnail = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for top in range(0, out_height * factor, chunk_h):
        for left in range(0, out_width * factor, chunk_w):
            width = min(chunk_w, out_width * factor - left)
            height = min(chunk_h, out_height * factor - top)
            # Not read_rgb: its Pillow copy of an opaque region raised the mask step's peak
            # (bench_tiles' 80k pyramid 94 -> 100 MiB, generic 20x 83 -> 85) for a small CPU gain.
            rgba = np.asarray(
                slide.read_region(
                    (round(left * level_downsample), round(top * level_downsample)),
                    level,
                    (width, height),
                )
            )
            rgb = composite_on_white(rgba)
            del rgba
            thumbnail[top // factor : (top + height) // factor, left // factor : (left + width) // factor] = (
                block_mean(rgb, factor)
            )
    return thumbnail, level_downsample * factor


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """uint8 mean of each ``factor`` x ``factor`` block (the sides are multiples of it)."""
    if factor == 1:
        return rgb
    # Pillow's box reduction rounds like (sum + n/2) // n, in C: numpy's strided sum over
    # a reshaped array was most of the cost of measuring tiles.
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB uint8 array, both uint8 (0-255)."""
    # Pairwise maximum/minimum of the channels: numpy's reduce over a length-3 last axis is
    # an order of magnitude slower on large arrays.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = (high.astype(np.uint16) - low) * 255 // np.maximum(high, 1)
    return saturation.astype(np.uint8), high


_MIN_VALUE = round(0.15 * 255)  # darker than this is pen ink or the scanner's edge


def tissue_pixels(rgb: np.ndarray, threshold_u8: int) -> np.ndarray:
    """Boolean: which pixels are tissue under the slide's saturation threshold."""
    saturation, value = saturation_value(rgb)
    return (saturation > threshold_u8) & (value > _MIN_VALUE)


def tissue_mask(thumbnail: np.ndarray, downsample: float, config: TilingConfig) -> TissueMask:
    """The tissue mask of an RGB uint8 thumbnail (see the module docstring for the method)."""
    saturation, value = saturation_value(thumbnail)
    saturation = ndimage.median_filter(saturation, size=5)
    threshold = math.ceil(config.min_saturation * 255)
    lowest, highest = int(saturation.min()), int(saturation.max())
    if highest > threshold and lowest < highest:
        # skimage's Otsu from the histogram it would build itself (it trims the empty ends).
        # A constant saturation above the floor is all tissue (skimage's Otsu would return
        # that value, and `>` would then empty the mask).
        otsu = filters.threshold_otsu(hist=_bincount_blocks(saturation, 256))
        threshold = max(threshold, int(otsu))
    mask = (saturation > threshold) & (value > _MIN_VALUE)
    del saturation, value
    mask = morphology.closing(mask, morphology.disk(2))
    tile_area_thumb = (config.tile_size_px / downsample) ** 2
    min_size = max(4, int(config.min_object_fraction * tile_area_thumb))
    mask = _remove_small_objects(mask, min_size)
    mask = ~_remove_small_objects(~mask, min_size)  # skimage's remove_small_holes
    return TissueMask(
        mask=mask, thumbnail=thumbnail, downsample=downsample, saturation_threshold=threshold / 255
    )


def _blocks(shape: tuple[int, ...]) -> list[slice]:
    """Row slices of an array of ``shape`` holding about ``_BLOCK_PX`` pixels each."""
    rows = max(1, _BLOCK_PX // max(1, math.prod(shape[1:])))
    return [slice(top, top + rows) for top in range(0, shape[0], rows)]


def _bincount_blocks(values: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount(values.ravel(), minlength=length)`` for values below ``length``."""
    counts = np.zeros(length, dtype=np.int64)
    for rows in _blocks(values.shape):
        counts += np.bincount(values[rows].ravel(), minlength=length)
    return counts


def _remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=max_size)`` bit for bit
    (4-connected components of at most ``max_size`` pixels dropped), in place of ``mask``,
    without skimage's 8-byte copy of the labels (tests/lib/ingest/test_tiling.py)."""
    labels = np.empty(mask.shape, dtype=np.int32)
    n = ndimage.label(mask, output=labels)
    too_small = _bincount_blocks(labels, n + 1) <= max_size
    too_small[0] = False
    for rows in _blocks(mask.shape):
        mask[rows] &= ~too_small[labels[rows]]
    return mask


def grid_tissue_fractions(
    mask: np.ndarray, downsample: float, width: int, height: int, size_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 corners and tissue fraction of every full grid cell, from an integral image."""
    xs = np.arange(0, width - size_px + 1, size_px)
    ys = np.arange(0, height - size_px + 1, size_px)
    # The summed-area table, built in place in int32 (a thumbnail has far fewer than 2^31 px).
    dtype = np.int32 if mask.size < 2**31 else np.int64
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=dtype)
    np.cumsum(mask, axis=0, dtype=integral.dtype, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])

    def edges(starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        low = np.clip(np.floor(starts / downsample).astype(int), 0, limit)
        high = np.clip(np.ceil((starts + size_px) / downsample).astype(int), 0, limit)
        return low, np.maximum(high, low + 1)

    x0, x1 = edges(xs, mask.shape[1])
    y0, y1 = edges(ys, mask.shape[0])
    Y0, X0 = np.meshgrid(y0, x0, indexing="ij")
    Y1, X1 = np.meshgrid(y1, x1, indexing="ij")
    covered = integral[Y1, X1] - integral[Y0, X1] - integral[Y1, X0] + integral[Y0, X0]
    fractions = covered / ((Y1 - Y0) * (X1 - X0))
    grid_x, grid_y = np.meshgrid(xs, ys, indexing="xy")
    return grid_x.ravel(), grid_y.ravel(), fractions.ravel()


def tile_grid(
    slide: openslide.OpenSlide, config: TilingConfig, mpp: float | None
) -> tuple[TileGrid, TissueMask]:
    """The kept tiles of ``slide`` (with their quality measures) and the tissue mask."""
    size_px = tile_side_px(config, mpp)
    width, height = slide.dimensions
    if size_px > min(width, height):
        raise TileSizeError(f"tile side {size_px}px exceeds the slide ({width}x{height}px)")
    thumbnail, downsample = read_thumbnail(
        slide, thumbnail_downsample(width, height, config), max_read_mb=config.max_read_mb
    )
    tissue = tissue_mask(thumbnail, downsample, config)
    xs, ys, coarse = grid_tissue_fractions(tissue.mask, downsample, width, height, size_px)
    candidate = coarse > config.candidate_fraction
    xs, ys = xs[candidate], ys[candidate]
    fraction, blur, saturation = measure_cells(slide, xs, ys, size_px, tissue, config)
    keep = fraction > config.min_tissue_fraction
    grid = TileGrid(
        xs[keep],
        ys[keep],
        size_px,
        fraction[keep],
        grid_cells=len(coarse),
        blur_variance=blur[keep],
        mean_saturation=saturation[keep],
        candidates=int(candidate.sum()),
    )
    return grid, tissue


def measure_cells(
    slide: openslide.OpenSlide,
    xs: np.ndarray,
    ys: np.ndarray,
    size_px: int,
    tissue: TissueMask,
    config: TilingConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue fraction, blur (variance of the Laplacian) and mean saturation of each cell.

    Cells are read at the level nearest ``quality_downsample`` rather than level 0: the
    measures need texture, not full resolution, and this keeps the cost a small fraction of
    a level-0 read. Cells near the keep threshold are measured on level 0 (``exact_band``).
    Each read is one cell, far below ``max_read_mb``.
    """
    level = slide.get_best_level_for_downsample(config.quality_downsample)
    side = max(8, round(size_px / slide.level_downsamples[level]))
    reduce = max(1, min(side // 8, int(config.quality_downsample / slide.level_downsamples[level])))
    if size_px * size_px * _BYTES_PER_READ_PIXEL > config.max_read_mb << 20:
        raise ReadBudgetError(
            f"a {size_px}x{size_px} px level-0 tile read exceeds max_read_mb={config.max_read_mb}; "
            "raise it or use a smaller tile size"
        )
    fraction = np.empty(len(xs))
    blur = np.empty(len(xs))
    saturation = np.empty(len(xs))
    for index, rgb in enumerate(_cell_pixels(slide, xs, ys, size_px, level, side, config.max_read_mb)):
        sat, value = saturation_value(rgb)
        fraction[index] = float(((sat > tissue.threshold_u8) & (value > _MIN_VALUE)).mean())
        # Quality screens are measured at about 1/quality_downsample whatever the pyramid,
        # so blur values of a single-level file and a pyramid compare.
        small = block_mean(rgb[: side // reduce * reduce, : side // reduce * reduce], reduce)
        blur[index] = float(ndimage.laplace(color.rgb2gray(small)).var())
        saturation[index] = float(saturation_value(small)[0].mean()) / 255
    if level:
        # Near the keep threshold the level-0 pixels decide; neighbours are read together.
        (near,) = np.nonzero(np.abs(fraction - config.min_tissue_fraction) <= config.exact_band)
        full = _cell_pixels(slide, xs[near], ys[near], size_px, 0, size_px, config.max_read_mb)
        for index, rgb in zip(near.tolist(), full, strict=True):
            fraction[index] = float(tissue_pixels(rgb, tissue.threshold_u8).mean())
    return fraction, blur, saturation


def overlay(tissue: TissueMask, grid: TileGrid, *, max_side: int = 768, min_side: int = 512) -> np.ndarray:
    """RGB picture of the thumbnail with the tissue mask tinted and kept tiles outlined."""
    image = tissue.thumbnail.copy()
    tint = np.array([40, 160, 60], dtype=np.uint16)
    image[tissue.mask] = ((65 * image[tissue.mask].astype(np.uint16) + 35 * tint) // 100).astype(np.uint8)
    side = max(1, round(grid.size_px / tissue.downsample))
    for x, y in zip(grid.xs.tolist(), grid.ys.tolist(), strict=True):
        x0, y0 = round(x / tissue.downsample), round(y / tissue.downsample)
        x1 = min(image.shape[1] - 1, x0 + side - 1)
        y1 = min(image.shape[0] - 1, y0 + side - 1)
        image[y0 : y1 + 1, [x0, x1]] = (20, 60, 200)
        image[[y0, y1], x0 : x1 + 1] = (20, 60, 200)
    # Large thumbnails shrink to max_side; small ones (a 20x biopsy) are enlarged to
    # min_side so the UI does not show a stamp.
    longest = max(image.shape[:2])
    scale = longest / max_side if longest > max_side else min(1.0, longest / min_side)
    if scale != 1:
        from PIL import Image

        size = (max(1, round(image.shape[1] / scale)), max(1, round(image.shape[0] / scale)))
        resample = Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.NEAREST
        image = np.asarray(Image.fromarray(image).resize(size, resample))
    return image


def level0_tissue_fractions(
    slide: openslide.OpenSlide, size_px: int, threshold_u8: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: every grid cell's tissue fraction measured on all of its level-0 pixels.

    The slow, exact measure that the thumbnail method is judged against (recall, purity);
    one cell per read, so memory stays bounded.
    """
    width, height = slide.dimensions
    xs = np.arange(0, width - size_px + 1, size_px)
    ys = np.arange(0, height - size_px + 1, size_px)
    grid_x, grid_y = (axis.ravel() for axis in np.meshgrid(xs, ys, indexing="xy"))
    fractions = np.array(
        [
            tissue_pixels(read_rgb(slide, int(x), int(y), 0, (size_px, size_px)), threshold_u8).mean()
            for x, y in zip(grid_x, grid_y, strict=True)
        ]
    )
    return grid_x, grid_y, fractions


def _cell_pixels(
    slide: openslide.OpenSlide,
    xs: np.ndarray,
    ys: np.ndarray,
    size_px: int,
    level: int,
    side: int,
    max_read_mb: int,
):
    """Each cell's RGB pixels at ``level``, in order; cells next to each other on a grid
    row are read as one region of at most ``max_read_mb``, so the JPEG tiles they share are
    decoded once per run instead of once per cell (the same pixels as one read per cell
    when the level's downsample divides the grid; otherwise one read per cell)."""
    downsample = slide.level_downsamples[level]
    step = round(downsample)
    aligned = abs(downsample - step) < 1e-9 and size_px % step == 0 and side * step == size_px
    if not aligned or not len(xs):
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            yield read_rgb(slide, x, y, level, (side, side))
        return
    longest = max(1, ((max_read_mb << 20) // _BYTES_PER_READ_PIXEL) // (side * side))
    start = 0
    while start < len(xs):
        end = start + 1
        while (
            end < len(xs)
            and end - start < longest
            and ys[end] == ys[start]
            and xs[end] == xs[end - 1] + size_px
        ):
            end += 1
        strip = read_rgb(slide, int(xs[start]), int(ys[start]), level, (side * (end - start), side))
        for offset in range(end - start):
            yield strip[:, offset * side : (offset + 1) * side]
        start = end
