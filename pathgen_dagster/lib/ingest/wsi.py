"""Whole-slide images through OpenSlide: open, describe, and read regions safely."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
)


class SlideReadError(RuntimeError):
    """A slide file that OpenSlide cannot read; the message names the file and the fix."""


@dataclass(frozen=True)
class SlideInfo:
    """What the registry records about one readable slide."""

    path: Path
    vendor: str
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    file_size: int

    @property
    def width(self) -> int:
        return self.level_dimensions[0][0]

    @property
    def height(self) -> int:
        return self.level_dimensions[0][1]

    def as_row(self) -> dict:
        return {
            "uri": str(self.path.resolve()),
            "vendor": self.vendor,
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "objective_power": self.objective_power,
            "level_count": len(self.level_dimensions),
            "level_dimensions": json.dumps([list(d) for d in self.level_dimensions]),
            "level_downsamples": json.dumps([round(d, 6) for d in self.level_downsamples]),
            "width": self.width,
            "height": self.height,
            "file_size": self.file_size,
        }


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """An OpenSlide handle for ``path``, or SlideReadError saying why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise SlideReadError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise SlideReadError(f"{path}: file is empty (0 bytes); re-copy it from the scanner")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideReadError(
            f"{path}: OpenSlide does not recognise it as a whole-slide image (Aperio SVS, "
            "pyramidal TIFF, NDPI, MRXS, ...): a different format, or a truncated copy"
        ) from None
    except openslide.OpenSlideError as error:
        raise SlideReadError(
            f"{path}: OpenSlide cannot read it ({error}); the file may be truncated"
        ) from None
    return slide


def _float_property(slide: openslide.OpenSlide, key: str) -> float | None:
    value = slide.properties.get(key)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def inspect(path: str | Path) -> SlideInfo:
    """SlideInfo of a readable slide; SlideReadError when any part of it cannot be read.

    Besides the header, the smallest level is decoded in full and one region of level 0 is
    read, because a truncated file often opens fine and fails only when pixels are read.
    """
    path = Path(path)
    slide = open_slide(path)
    try:
        smallest = slide.level_count - 1
        slide.read_region((0, 0), smallest, slide.level_dimensions[smallest]).load()
        width, height = slide.dimensions
        slide.read_region((width // 2, height // 2), 0, (min(256, width), min(256, height))).load()
        return SlideInfo(
            path=path,
            vendor=slide.properties.get(openslide.PROPERTY_NAME_VENDOR) or "unknown",
            mpp_x=_float_property(slide, openslide.PROPERTY_NAME_MPP_X),
            mpp_y=_float_property(slide, openslide.PROPERTY_NAME_MPP_Y),
            objective_power=_float_property(slide, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
            level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in slide.level_downsamples),
            file_size=path.stat().st_size,
        )
    except openslide.OpenSlideError as error:
        raise SlideReadError(
            f"{path}: pixel data cannot be decoded ({error}); the file may be truncated"
        ) from None
    finally:
        slide.close()


def read_rgb(
    slide: openslide.OpenSlide, x: int, y: int, level: int, size: tuple[int, int]
) -> np.ndarray:
    """RGB uint8 array of a region whose top-left is level-0 (x, y), composited on white.

    OpenSlide marks pixels outside the scanned area as transparent (RGB 0); compositing on
    white makes them read as glass, not as black tissue.
    """
    rgba = np.asarray(slide.read_region((x, y), level, size))
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def read_tiles(
    slide: openslide.OpenSlide, xs: list[int], ys: list[int], size_px: int, *, level: int = 0
) -> np.ndarray:
    """N x size x size x 3 uint8 RGB tiles at level-0 corners (xs, ys), read at ``level``."""
    side = max(1, round(size_px / slide.level_downsamples[level]))
    tiles = np.empty((len(xs), side, side, 3), dtype=np.uint8)
    for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
        tiles[index] = read_rgb(slide, int(x), int(y), level, (side, side))
    return tiles
