"""SQL models: one asset per ``dbt_like_sql/*.sql`` file, run by DuckDB over the Delta tables.

Each model's dependencies are the tables its SELECT refs, so the asset graph shows
``captions -> training_pairs -> dataset_stats`` without anyone wiring it. A per-slide model
(its table is partitioned by ``slide_id``) rebuilds one slide's rows per run; a whole-dataset
model is unpartitioned, depends on partitioned tables through ``deps`` only and reads their
Delta tables (FACTS.md: no IO manager between the two).
"""

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa

from assets.coverage import coverage_spec, slide_coverage
from pathgen_dagster.lib.dataset.sql_models import SqlModel, discover, quote, render
from pathgen_dagster.metadata import column_schema, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse

GROUP = "training_data"


class SourceMissing(RuntimeError):
    """A table a model refs has never been written."""


@dataclass(frozen=True)
class ModelBuild:
    """What one model run produced: its rows, the versions it read and the SQL it ran."""

    rows: pa.Table
    source_versions: dict[str, int]
    sql: str
    query_seconds: float


def build_model(
    lakehouse: Lakehouse,
    model: SqlModel,
    *,
    partition_key: str | None,
    run_id: str,
    memory_limit: str | None = None,
) -> ModelBuild:
    """Run ``model`` over its sources, each pinned to its current Delta version.

    Every ``ref`` reads ``delta_scan(uri, version => v)`` with the same ``v`` that
    ``version()`` writes into the rows, so a row's recorded versions are exactly what it was
    built from even while other slides' writers commit. ``partition_key=None`` on a
    per-slide model rebuilds every slide at once (benchmarks, repairs); give it a
    ``memory_limit`` (DuckDB syntax, e.g. ``"4GB"``) so its joins spill to disk instead of
    taking most of the machine (12 GiB peak unbounded at 1.6M pairs).
    """
    source_versions: dict[str, int] = {}
    for table in model.refs:
        version = lakehouse.version(table)
        if version is None:
            raise SourceMissing(
                f"SQL model {model.name!r}: table {table!r} has never been written; "
                f"materialize {table!r} first"
            )
        source_versions[table] = version
    relations = {
        table: f"delta_scan({quote(lakehouse.uri(table))}, version => {version})"
        for table, version in source_versions.items()
    }
    sql = render(
        model,
        relations=relations,
        versions=source_versions,
        partition_key=partition_key,
        run_id=run_id,
    )
    started = time.perf_counter()
    with lakehouse.connect(views=False) as connection:
        # Row order is the SQL's to set (ORDER BY); without one, DuckDB may stream freely.
        connection.execute("SET preserve_insertion_order = false")
        if memory_limit:
            # Spill beside a local lakehouse; an object store's spill stays on local disk.
            spill = (
                Path(tempfile.gettempdir()) / "pathgen_duckdb_spill"
                if lakehouse.is_object_store
                else Path(lakehouse.location("_duckdb_spill"))
            )
            connection.execute(f"SET memory_limit = {quote(memory_limit)}")
            connection.execute(f"SET temp_directory = {quote(str(spill))}")
        rows = connection.sql(sql).to_arrow_table()
    return ModelBuild(rows, source_versions, sql, time.perf_counter() - started)


def write_model(
    lakehouse: Lakehouse, model: SqlModel, build: ModelBuild, *, partition_key: str | None
) -> int:
    """Write a build through the lakehouse's schema-checked writer; return the new version."""
    if model.partitioned and partition_key is not None:
        return lakehouse.write_slide(model.name, partition_key, build.rows)
    return lakehouse.write_table(model.name, build.rows)


def sql_model_asset(model: SqlModel) -> dg.AssetsDefinition:
    """The Dagster asset that builds ``model``'s table."""

    @dg.asset(
        name=model.name,
        deps=list(model.refs),
        partitions_def=slide_partitions if model.partitioned else None,
        group_name=GROUP,
        kinds={"duckdb", "delta", "sql"},
        description=model.description,
        code_version=model.sql_hash,
        # A whole-dataset model builds from the slides that passed and says which are missing.
        check_specs=None if model.partitioned else [coverage_spec(model.name)],
        metadata={
            "dagster/column_schema": column_schema(model.spec),
            "sql_file": dg.MetadataValue.path(str(model.path)),
            "sql": dg.MetadataValue.md(f"```sql\n{model.template.strip()}\n```"),
        },
    )
    def _sql_model(context: dg.AssetExecutionContext, lakehouse: Lakehouse) -> dg.MaterializeResult:
        slide_id = context.partition_key if model.partitioned else None
        where = f"slide {slide_id!r}, " if slide_id else ""
        try:
            build = build_model(lakehouse, model, partition_key=slide_id, run_id=context.run_id)
        except SourceMissing as error:
            raise dg.Failure(f"{where}stage {model.name}: {error}") from None
        started = time.perf_counter()
        version = write_model(lakehouse, model, build, partition_key=slide_id)
        frame = pl.from_arrow(build.rows.slice(0, 10))
        coverage, checks = ({}, []) if model.partitioned else _coverage(context, model.name)
        return dg.MaterializeResult(
            check_results=checks,
            metadata={
                **coverage,
                "dagster/row_count": build.rows.num_rows,
                "delta_version": version,
                **{f"{table}_version": v for table, v in build.source_versions.items()},
                "query_seconds": round(build.query_seconds, 3),
                "write_seconds": round(time.perf_counter() - started, 3),
                "preview": preview(frame, model.spec.column_names[:6]),
                "rendered_sql": dg.MetadataValue.md(f"```sql\n{build.sql}\n```"),
            }
        )

    return _sql_model


def _coverage(context: dg.AssetExecutionContext, name: str) -> tuple[dict, list[dg.AssetCheckResult]]:
    metadata, result = slide_coverage(context.instance, name)
    return metadata, [result]


# Every model file becomes an asset; load_assets_from_package_module picks up this list.
sql_model_assets = [sql_model_asset(model) for model in discover()]
