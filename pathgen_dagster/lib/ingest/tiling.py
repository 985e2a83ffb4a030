"""Tissue detection and the tile grid: which level-0 grid cells of a slide hold tissue.

Method (CLAM-style, as PathGen used): a thumbnail at 1/32 of level 0 is converted to HSV;
the saturation channel is median-filtered and thresholded with Otsu's method (never below
``min_saturation``, so an all-glass slide yields an empty mask instead of thresholding
noise); very dark pixels (pen marks, scanner edges) are excluded; the mask is closed
morphologically, small specks are removed and small holes filled. Each non-overlapping
grid cell's tissue fraction is the mean of the mask over its footprint, computed for all
cells at once from an integral image, so no level-0 pixels are read to decide which tiles
to keep. Only kept tiles are read, at a reduced level, for the cheap quality measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import openslide
from scipy import ndimage
from skimage import color, filters, morphology

from pathgen_dagster.lib.ingest.wsi import read_rgb


@dataclass(frozen=True)
class TilingConfig:
    """How a slide is cut into tiles; every default is PathGen's.

    Attributes:
        tile_size_px: tile side in level-0 pixels (PathGen: 672).
        tile_size_um: tile side in microns; when set it wins over ``tile_size_px`` and is
            converted with the slide's microns per pixel (672 px is 168 um at 40x).
        min_tissue_fraction: keep a tile when its tissue fraction is strictly above this.
        mask_downsample: thumbnail scale for the tissue mask (1/32 of level 0).
        min_saturation: lowest saturation threshold Otsu may choose.
        min_object_fraction: specks smaller than this fraction of a tile are removed.
        quality_downsample: downsample at which kept tiles are read for quality measures.
    """

    tile_size_px: int = 672
    tile_size_um: float | None = None
    min_tissue_fraction: float = 0.5
    mask_downsample: int = 32
    min_saturation: float = 0.05
    min_object_fraction: float = 0.05
    quality_downsample: int = 8


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide at ``downsample`` of level 0."""

    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: float
    saturation_threshold: float


@dataclass(frozen=True)
class TileGrid:
    """The kept tiles of one slide: level-0 corners, side, and tissue fractions."""

    xs: np.ndarray
    ys: np.ndarray
    size_px: int
    tissue_fraction: np.ndarray
    grid_cells: int

    def __len__(self) -> int:
        return len(self.xs)


class TileSizeError(ValueError):
    """The requested tile size cannot be applied to this slide."""


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


def read_thumbnail(slide: openslide.OpenSlide, downsample: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail at about ``downsample`` of level 0, and its exact downsample."""
    width, height = slide.dimensions
    size = (max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample)))
    level = slide.get_best_level_for_downsample(downsample)
    region = read_rgb(slide, 0, 0, level, slide.level_dimensions[level])
    if region.shape[1::-1] != size:
        from PIL import Image

        region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BOX))
    return region, width / size[0]


def tissue_mask(thumbnail: np.ndarray, downsample: float, config: TilingConfig) -> TissueMask:
    """The tissue mask of an RGB thumbnail (see the module docstring for the method)."""
    hsv = color.rgb2hsv(thumbnail)
    saturation = ndimage.median_filter(hsv[..., 1], size=5)
    value = hsv[..., 2]
    threshold = config.min_saturation
    if float(saturation.max()) > config.min_saturation:
        threshold = max(threshold, float(filters.threshold_otsu(saturation)))
    mask = (saturation > threshold) & (value > 0.15)
    mask = morphology.closing(mask, morphology.disk(2))
    tile_area_thumb = (config.tile_size_px / downsample) ** 2
    min_size = max(4, int(config.min_object_fraction * tile_area_thumb))
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = morphology.remove_small_holes(mask, max_size=min_size)
    return TissueMask(
        mask=mask, thumbnail=thumbnail, downsample=downsample, saturation_threshold=threshold
    )


def grid_tissue_fractions(
    mask: np.ndarray, downsample: float, width: int, height: int, size_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 corners and tissue fraction of every full grid cell, from an integral image."""
    xs = np.arange(0, width - size_px + 1, size_px)
    ys = np.arange(0, height - size_px + 1, size_px)
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

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
    """The kept tiles of ``slide`` and the tissue mask they were chosen from."""
    size_px = tile_side_px(config, mpp)
    width, height = slide.dimensions
    if size_px > min(width, height):
        raise TileSizeError(f"tile side {size_px}px exceeds the slide ({width}x{height}px)")
    thumbnail, downsample = read_thumbnail(slide, config.mask_downsample)
    tissue = tissue_mask(thumbnail, downsample, config)
    xs, ys, fractions = grid_tissue_fractions(tissue.mask, downsample, width, height, size_px)
    keep = fractions > config.min_tissue_fraction
    grid = TileGrid(xs[keep], ys[keep], size_px, fractions[keep], grid_cells=len(xs))
    return grid, tissue


def quality_measures(
    slide: openslide.OpenSlide, grid: TileGrid, config: TilingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Blur (variance of the Laplacian) and mean saturation of each kept tile.

    Tiles are read at the level nearest ``quality_downsample`` rather than level 0: both
    measures are only screens, and this keeps the cost a small fraction of a level-0 read.
    """
    level = slide.get_best_level_for_downsample(config.quality_downsample)
    level_downsample = slide.level_downsamples[level]
    side = max(8, round(grid.size_px / level_downsample))
    blur = np.empty(len(grid))
    saturation = np.empty(len(grid))
    for index, (x, y) in enumerate(zip(grid.xs.tolist(), grid.ys.tolist(), strict=True)):
        rgb = read_rgb(slide, x, y, level, (side, side))
        grey = color.rgb2gray(rgb)
        blur[index] = float(ndimage.laplace(grey).var())
        saturation[index] = float(color.rgb2hsv(rgb)[..., 1].mean())
    return blur, saturation


def overlay(tissue: TissueMask, grid: TileGrid, max_side: int = 768) -> np.ndarray:
    """RGB picture of the thumbnail with the tissue mask tinted and kept tiles outlined."""
    image = tissue.thumbnail.astype(np.float32)
    tint = np.array([40.0, 160.0, 60.0])
    image[tissue.mask] = 0.65 * image[tissue.mask] + 0.35 * tint
    image = image.astype(np.uint8)
    side = max(1, round(grid.size_px / tissue.downsample))
    for x, y in zip(grid.xs.tolist(), grid.ys.tolist(), strict=True):
        x0, y0 = round(x / tissue.downsample), round(y / tissue.downsample)
        x1 = min(image.shape[1] - 1, x0 + side - 1)
        y1 = min(image.shape[0] - 1, y0 + side - 1)
        image[y0 : y1 + 1, [x0, x1]] = (20, 60, 200)
        image[[y0, y1], x0 : x1 + 1] = (20, 60, 200)
    scale = max(image.shape[:2]) / max_side
    if scale > 1:
        from PIL import Image

        size = (round(image.shape[1] / scale), round(image.shape[0] / scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return image
