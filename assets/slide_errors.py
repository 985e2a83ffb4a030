"""``slide_errors``: every landing file that was not registered or not processed, and why.

The table is written where files are judged (the landing sensor, ``pathgen register``, and
the ``slides`` asset), so this asset observes it rather than building it: each observation
(by hand, or emitted by a sensor tick that rejected files) shows the rows in the UI.
"""

import dagster as dg
import polars as pl

from pathgen_dagster.lib.schemas import SLIDE_ERRORS
from pathgen_dagster.metadata import column_schema, preview
from pathgen_dagster.resources.lakehouse import Lakehouse


def slide_errors_metadata(lakehouse: Lakehouse) -> dict:
    """Row count, counts per stage and a preview of the newest rows of ``slide_errors``."""
    rows = lakehouse.read(SLIDE_ERRORS.name).sort("detected_at", descending=True)
    by_stage = rows.group_by("stage").len().sort("stage")
    return {
        "dagster/row_count": len(rows),
        "delta_version": lakehouse.version(SLIDE_ERRORS.name) or 0,
        "by_stage": dg.MetadataValue.json(dict(by_stage.iter_rows())),
        "preview": preview(
            rows.with_columns(pl.col("uri").str.split("/").list.last().alias("file")),
            ["slide_id", "file", "stage", "reason"],
            rows=20,
        ),
    }


def slide_errors_observation(lakehouse: Lakehouse) -> dg.AssetObservation:
    """An observation of the table, for sensors and the CLI to report rejections with."""
    return dg.AssetObservation(asset_key=SLIDE_ERRORS.name, metadata=slide_errors_metadata(lakehouse))


@dg.observable_source_asset(
    name=SLIDE_ERRORS.name,
    group_name="ingest",
    description=SLIDE_ERRORS.doc + " Written by the landing sensor, `pathgen register` and "
    "`slides`; observe to refresh the preview.",
    metadata={"dagster/column_schema": column_schema(SLIDE_ERRORS)},
)
def slide_errors(lakehouse: Lakehouse) -> dg.ObserveResult:
    metadata = slide_errors_metadata(lakehouse)
    return dg.ObserveResult(
        metadata=metadata,
        data_version=dg.DataVersion(str(metadata["delta_version"])),
    )
