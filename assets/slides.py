"""``slides``: the registry row of one slide, read with OpenSlide from the landing zone."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from pathgen_dagster.lib.ingest.registry import duplicate_reason, record_slide_error
from pathgen_dagster.lib.ingest.sources import sha256_file
from pathgen_dagster.lib.ingest.wsi import SlideReadError, inspect
from pathgen_dagster.lib.schemas import SLIDES
from pathgen_dagster.metadata import column_schema
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore


@dg.asset(
    name=SLIDES.name,
    partitions_def=slide_partitions,
    group_name="ingest",
    kinds={"openslide", "delta"},
    description=SLIDES.doc,
    metadata={"dagster/column_schema": column_schema(SLIDES)},
)
def slides(
    context: dg.AssetExecutionContext, lakehouse: Lakehouse, slide_store: SlideStore
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    landing_file = slide_store.locate(slide_id)
    try:
        info = inspect(landing_file.path)
    except SlideReadError as error:
        record_slide_error(lakehouse, slide_id, landing_file.path, stage=SLIDES.name, reason=str(error))
        raise dg.Failure(
            description=f"slide {slide_id!r}, stage slides: {error}. "
            "The file was recorded in slide_errors; other slides are unaffected.",
        ) from None
    digest = sha256_file(landing_file.path)
    same = lakehouse.read(SLIDES.name, columns=["slide_id", "sha256", "uri"]).filter(
        (pl.col("sha256") == digest) & (pl.col("slide_id") != slide_id)
    )
    if not same.is_empty():
        # Registered twice before either was materialized: the first one in wins.
        original = same.row(0, named=True)
        reason = duplicate_reason(landing_file.path, original["slide_id"], original["uri"], digest)
        record_slide_error(lakehouse, slide_id, landing_file.path, stage=SLIDES.name, reason=reason)
        raise dg.Failure(description=f"slide {slide_id!r}, stage slides: {reason}")
    row = {
        "slide_id": slide_id,
        **info.as_row(),
        "file_name": landing_file.path.name,
        "sha256": digest,
        "tissue_site": landing_file.tissue_site,
        "registered_at": datetime.now(UTC),
        "run_id": context.run_id,
    }
    version = lakehouse.write_slide(SLIDES.name, slide_id, pl.DataFrame([row]))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": 1,
            "delta_version": version,
            "vendor": info.vendor,
            "dimensions": f"{info.width} x {info.height}",
            "levels": len(info.level_dimensions),
            "mpp": info.mpp_x or 0.0,
            "objective_power": info.objective_power or 0.0,
            "sha256": row["sha256"],
            "uri": dg.MetadataValue.path(row["uri"]),
        }
    )
