"""A ~250-tile, three-tissue slide from the shipped H&E sources, to check selection yield.

Issue 10: on a multi-tissue slide PathGen keeps dozens of patches per slide, and the
0.88 near-duplicate threshold (CLIP's) applied to the morphology vector kept three. This
builds the tiles of such a slide in memory: 44 distinct 224 px fields whose tissue was
named by looking at the CMU slide on a 224 px grid (14 of epidermis, 14 of dermal
collagen) and the whole tiatoolbox carcinoma image (16 fields), each present six times as
a scanner could repeat it (as is, rotated, flipped both ways, shifted by 12 um into real
neighbouring tissue, JPEG re-encoded), as the sample slides repeat their islands. A good
selection keeps about one of each group of copies and all three tissues.
"""

from __future__ import annotations

import io

import numpy as np
import openslide
from PIL import Image

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, TIATOOLBOX_TARGET, fetch

TILE = 224
SHIFT = 24  # 12 um at 0.5 um/px
MPP = 0.5
# (row, column) of 224 px grid cells of CMU-1-Small-Region, named by looking at the grid.
EPIDERMIS = (
    (3, 5),
    (4, 5),
    (5, 5),
    (6, 5),
    (8, 5),
    (8, 6),
    (9, 5),
    (9, 6),
    (10, 5),
    (11, 7),
    (12, 7),
    (10, 3),
    (11, 3),
    (12, 3),
)
DERMIS = (
    (1, 5),
    (2, 4),
    (3, 4),
    (5, 4),
    (8, 4),
    (9, 3),
    (9, 4),
    (9, 7),
    (10, 6),
    (10, 7),
    (11, 5),
    (11, 6),
    (12, 4),
    (12, 5),
)
COPIES = ("original", "rot90", "hflip", "vflip", "shift", "jpeg")


def _jpeg(tile: np.ndarray, quality: int = 80) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _copies(image: np.ndarray, y: int, x: int) -> list[np.ndarray]:
    tile = image[y : y + TILE, x : x + TILE]
    # Shift into the neighbouring tissue, away from the image edge.
    dy = SHIFT if y + TILE + SHIFT <= image.shape[0] else -SHIFT
    dx = SHIFT if x + TILE + SHIFT <= image.shape[1] else -SHIFT
    return [
        tile,
        np.rot90(tile),
        tile[:, ::-1],
        tile[::-1],
        image[y + dy : y + dy + TILE, x + dx : x + dx + TILE],
        _jpeg(np.ascontiguousarray(tile)),
    ]


def build() -> tuple[np.ndarray, list[str], list[int]]:
    """(N x 224 x 224 x 3 tiles, tissue of each, distinct field of each), N = 264."""
    with openslide.OpenSlide(str(fetch(CMU_SMALL_REGION))) as slide:
        cmu = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    target = np.asarray(Image.open(fetch(TIATOOLBOX_TARGET)).convert("RGB"))
    fields = [("epidermis", cmu, r * TILE, c * TILE) for r, c in EPIDERMIS]
    fields += [("dermis", cmu, r * TILE, c * TILE) for r, c in DERMIS]
    step = (target.shape[0] - TILE) // 3
    fields += [("carcinoma", target, r * step, c * step) for r in range(4) for c in range(4)]
    tiles, tissues, groups = [], [], []
    for index, (tissue, image, y, x) in enumerate(fields):
        for copy in _copies(image, y, x):
            tiles.append(np.ascontiguousarray(copy))
            tissues.append(tissue)
            groups.append(index)
    return np.stack(tiles), tissues, groups
