"""A ~250-tile, three-tissue slide from the shipped H&E sources, to check selection yield.

Issue 10: on a multi-tissue slide PathGen keeps dozens of patches per slide, and the
0.88 near-duplicate threshold (CLIP's) applied to the morphology vector kept three. This
builds the tiles of such a slide in memory: 44 distinct 224 px fields whose tissue was
named by looking at the CMU slide on a 224 px grid (14 of epidermis, 14 of dermal
collagen) and the whole tiatoolbox carcinoma image (16 fields), each present six times as
a scanner could repeat it (as is, rotated, flipped both ways, shifted by 12 um into real
neighbouring tissue, JPEG re-encoded), as the sample slides repeat their islands. A good
selection keeps about one of each group of copies and all three tissues.

Every tile is measured at its own source's resolution (:func:`embed`): the CMU fields at
the slide's recorded 0.499 um/px (112 um across), the carcinoma fields at the target
image's ~0.25 um/px (56 um across; that image holds only four 112 um fields).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pathgen_dagster.lib.ingest.samples import Source, real_sources

TILE = 224
SHIFT_UM = 12.0
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


def _copies(source: Source, y: int, x: int) -> list[np.ndarray]:
    image = source.rgb
    tile = image[y : y + TILE, x : x + TILE]
    # Shift into the neighbouring tissue, away from the image edge.
    shift = round(SHIFT_UM / source.mpp)
    dy = shift if y + TILE + shift <= image.shape[0] else -shift
    dx = shift if x + TILE + shift <= image.shape[1] else -shift
    return [
        tile,
        np.rot90(tile),
        tile[:, ::-1],
        tile[::-1],
        image[y + dy : y + dy + TILE, x + dx : x + dx + TILE],
        _jpeg(np.ascontiguousarray(tile)),
    ]


def build() -> tuple[np.ndarray, list[str], list[int], list[float]]:
    """(N x 224 x 224 x 3 tiles, tissue of each, distinct field of each, mpp of each), N = 264."""
    cmu, target = real_sources()
    fields = [("epidermis", cmu, r * TILE, c * TILE) for r, c in EPIDERMIS]
    fields += [("dermis", cmu, r * TILE, c * TILE) for r, c in DERMIS]
    step = (target.rgb.shape[0] - TILE) // 3
    fields += [("carcinoma", target, r * step, c * step) for r in range(4) for c in range(4)]
    tiles, tissues, groups, mpps = [], [], [], []
    for index, (tissue, source, y, x) in enumerate(fields):
        for copy in _copies(source, y, x):
            tiles.append(np.ascontiguousarray(copy))
            tissues.append(tissue)
            groups.append(index)
            mpps.append(source.mpp)
    return np.stack(tiles), tissues, groups, mpps


def embed(encoders, tiles: np.ndarray, mpps: list[float]) -> tuple[np.ndarray, list]:
    """``encoders.embed_tiles`` of every tile at its own mpp, in the tiles' order (an
    embedding row depends on its own tile only)."""
    mpps = np.asarray(mpps)
    embeddings, facts = None, [None] * len(tiles)
    for mpp in np.unique(mpps):
        where = np.flatnonzero(mpps == mpp)
        rows, measured = encoders.embed_tiles(tiles[where], float(mpp))
        if embeddings is None:
            embeddings = np.empty((len(tiles), rows.shape[1]), rows.dtype)
        embeddings[where] = rows
        for i, f in zip(where.tolist(), measured, strict=True):
            facts[i] = f
    return embeddings, facts
