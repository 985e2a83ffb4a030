"""``tiles``: the tissue tiles of one slide on PathGen's 672 px level-0 grid."""

import time

import dagster as dg
import polars as pl

from pathgen_dagster.lib.ingest.tiling import (
    ReadBudgetError,
    TileSizeError,
    TilingConfig,
    overlay,
    tile_grid,
)
from pathgen_dagster.lib.ingest.wsi import SlideReadError, open_slide
from pathgen_dagster.lib.schemas import SLIDES, TILES
from pathgen_dagster.metadata import column_schema, config_hash, picture, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse

_DEFAULTS = TilingConfig()


class TilesConfig(dg.Config):
    """Tiling knobs (PathGen defaults); see ``TilingConfig`` for their meaning."""

    tile_size_px: int = _DEFAULTS.tile_size_px
    tile_size_um: float | None = _DEFAULTS.tile_size_um
    min_tissue_fraction: float = _DEFAULTS.min_tissue_fraction
    mask_downsample: int = _DEFAULTS.mask_downsample
    mask_min_side_px: int = _DEFAULTS.mask_min_side_px
    min_saturation: float = _DEFAULTS.min_saturation
    candidate_fraction: float = _DEFAULTS.candidate_fraction
    exact_band: float = _DEFAULTS.exact_band
    quality_downsample: int = _DEFAULTS.quality_downsample
    max_read_mb: int = _DEFAULTS.max_read_mb

    def tiling(self) -> TilingConfig:
        return TilingConfig(**self.model_dump())


def tile_id(slide_id: str, x: int, y: int, size_px: int) -> str:
    """Deterministic tile id: the slide and the tile's level-0 box."""
    return f"{slide_id}_x{x}_y{y}_s{size_px}"


def slide_row(lakehouse: Lakehouse, slide_id: str, stage: str) -> dict:
    """The registry row of ``slide_id``, or a Failure naming the slide and the stage."""
    rows = lakehouse.read(SLIDES.name, slide_id=slide_id)
    if rows.is_empty():
        raise dg.Failure(f"slide {slide_id!r}, stage {stage}: no row in `slides`; materialize it first")
    return rows.row(0, named=True)


@dg.asset(
    name=TILES.name,
    partitions_def=slide_partitions,
    deps=[SLIDES.name],
    group_name="ingest",
    kinds={"openslide", "delta"},
    pool="tile_readers",
    description=TILES.doc,
    metadata={"dagster/column_schema": column_schema(TILES)},
)
def tiles(
    context: dg.AssetExecutionContext, config: TilesConfig, lakehouse: Lakehouse
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    slide = slide_row(lakehouse, slide_id, TILES.name)
    mpp = slide["mpp_x"]
    started = time.perf_counter()
    try:
        with open_slide(slide["uri"]) as handle:
            grid, tissue = tile_grid(handle, config.tiling(), mpp)
    except (SlideReadError, TileSizeError, ReadBudgetError) as error:
        raise dg.Failure(f"slide {slide_id!r}, stage tiles: {error}") from None
    elapsed = time.perf_counter() - started
    frame = pl.DataFrame(
        {
            "tile_id": [
                tile_id(slide_id, x, y, grid.size_px)
                for x, y in zip(grid.xs.tolist(), grid.ys.tolist(), strict=True)
            ],
            "slide_id": slide_id,
            "x": grid.xs.astype("int64"),
            "y": grid.ys.astype("int64"),
            "level": 0,
            "size_px": grid.size_px,
            "mpp": mpp,
            "size_um": grid.size_px * mpp if mpp else None,
            "tissue_fraction": grid.tissue_fraction.astype("float64"),
            "blur_variance": grid.blur_variance,
            "mean_saturation": grid.mean_saturation,
            "run_id": context.run_id,
            "config_hash": config_hash(config),
            "upstream_version": lakehouse.version(SLIDES.name),
        },
        schema_overrides={
            "level": pl.Int32,
            "size_px": pl.Int32,
            "mpp": pl.Float64,
            "size_um": pl.Float64,
        },
    )
    version = lakehouse.write_slide(TILES.name, slide_id, frame)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            "grid_cells": grid.grid_cells,
            "cells_measured_finely": grid.candidates,
            "mask_downsample": round(tissue.downsample, 2),
            "saturation_threshold": round(tissue.saturation_threshold, 4),
            "tile_size_px": grid.size_px,
            "tissue_area_fraction": float(tissue.mask.mean()),
            "seconds": round(elapsed, 2),
            "tiles_per_second": round(grid.grid_cells / elapsed, 1) if elapsed else 0.0,
            "preview": preview(frame, ["tile_id", "x", "y", "tissue_fraction", "blur_variance"]),
            **picture(
                overlay(tissue, grid),
                lakehouse.put_artifact,
                f"_artifacts/tiles/{slide_id}.png",
                "tissue mask and tile grid",
            ),
        }
    )
