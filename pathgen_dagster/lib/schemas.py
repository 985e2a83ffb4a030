"""Every Delta table of the lakehouse: its columns, their Arrow types and one-line meanings.

The lakehouse writer checks each frame against these schemas before it writes, because
deltalake silently casts a wrong column type (FACTS.md: 0.5 into an int column became 0).
Table names are the asset names; every per-slide table is partitioned by ``slide_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, meaning, and whether nulls are allowed."""

    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: what it holds, its columns and how it is partitioned."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ("slide_id",)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.doc})
                for c in self.columns
            ]
        )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


# Provenance columns shared by every stage table (STYLE.md habit 6).
PROVENANCE = (
    Column("run_id", pa.string(), "Dagster run that wrote the row"),
    Column("config_hash", pa.string(), "sha256 (16 hex) of the stage config that produced the row"),
    Column(
        "upstream_version", pa.int64(), "Delta version of the upstream table that was read", True
    ),
)

SLIDE_ID = Column("slide_id", pa.string(), "sanitised slide id, the Dagster partition key")

SLIDES = TableSpec(
    "slides",
    "Slide registry: one row per readable whole-slide image in the landing zone.",
    (
        SLIDE_ID,
        Column("uri", pa.string(), "absolute path of the slide file"),
        Column("file_name", pa.string(), "original file name, before sanitising"),
        Column("vendor", pa.string(), "OpenSlide vendor (aperio, generic-tiff, ...)"),
        Column("mpp_x", pa.float64(), "microns per pixel along x at level 0", True),
        Column("mpp_y", pa.float64(), "microns per pixel along y at level 0", True),
        Column("objective_power", pa.float64(), "scanner objective magnification", True),
        Column("level_count", pa.int32(), "number of pyramid levels"),
        Column("level_dimensions", pa.string(), "JSON list of [width, height] per level"),
        Column("level_downsamples", pa.string(), "JSON list of downsample factors per level"),
        Column("width", pa.int64(), "level-0 width in pixels"),
        Column("height", pa.int64(), "level-0 height in pixels"),
        Column("file_size", pa.int64(), "file size in bytes"),
        Column("sha256", pa.string(), "sha256 of the slide file"),
        Column("tissue_site", pa.string(), "tissue site / cancer type used for prompts", True),
        Column("registered_at", pa.timestamp("us", tz="UTC"), "when the row was written"),
        Column("run_id", pa.string(), "Dagster run that wrote the row"),
    ),
)

SLIDE_ERRORS = TableSpec(
    "slide_errors",
    "Landing files that OpenSlide cannot read: not registered, kept with the reason.",
    (
        SLIDE_ID,
        Column("uri", pa.string(), "absolute path of the file"),
        Column("file_size", pa.int64(), "file size in bytes"),
        Column("stage", pa.string(), "stage that rejected the file"),
        Column("reason", pa.string(), "why the file was rejected, and the fix"),
        Column("detected_at", pa.timestamp("us", tz="UTC"), "when the error was recorded"),
    ),
)

TILES = TableSpec(
    "tiles",
    "Tissue tiles: the non-overlapping level-0 grid cells whose tissue fraction passes.",
    (
        Column("tile_id", pa.string(), "deterministic id: slide_id/x_y_size"),
        SLIDE_ID,
        Column("x", pa.int64(), "level-0 x of the tile's top-left corner"),
        Column("y", pa.int64(), "level-0 y of the tile's top-left corner"),
        Column("level", pa.int32(), "pyramid level the tile is read at"),
        Column("size_px", pa.int32(), "tile side in level-0 pixels"),
        Column("mpp", pa.float64(), "microns per pixel at level 0", True),
        Column("size_um", pa.float64(), "tile side in microns", True),
        Column("tissue_fraction", pa.float64(), "fraction of the tile covered by the tissue mask"),
        Column("blur_variance", pa.float64(), "variance of the Laplacian (low = blurred)"),
        Column("mean_saturation", pa.float64(), "mean HSV saturation in [0, 1]"),
        *PROVENANCE,
    ),
)

# Later stages add their TableSpec constants above this line, one section per stage.
# -- end of table specs --

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in list(globals().values()) if isinstance(spec, TableSpec)
}
