"""Keep Delta tables healthy at scale without breaking lineage's time travel.

Per table: ``optimize.compact()`` (small files of one slide merged; optionally z-ordered),
a checkpoint (readers replay one Parquet file instead of every JSON commit), then ``vacuum``.

The retention rule (docs/scale.md): a file is deleted only when (1) no version pinned by
lineage needs it, (2) the current version does not need it, and (3) it was removed from the
table more than ``retention_hours`` ago. Pinned versions are every distinct ``<table>_version``
value in the current rows of the tables that record them (``training_pairs``,
``dataset_stats``, ``quarantine_report``): exactly the versions ``pathgen lineage`` time-travels
to. They are passed to deltalake's ``vacuum(keep_versions=...)``. The commit log itself is
never cleaned here, and ``delta.enableExpiredLogCleanup`` is set to false on every table so
that checkpoints written by writers do not delete old commits either (a pinned version needs
its commit files to be found).

Row counts are measured before and after; a difference raises (nothing should ever change the
data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import polars as pl
from deltalake.exceptions import CommitFailedError

from pathgen_dagster.lib.schemas import TABLES
from pathgen_dagster.resources.lakehouse import Lakehouse

NO_LOG_CLEANUP = {"delta.enableExpiredLogCleanup": "false"}
COMMIT_ATTEMPTS = 4


class MaintenanceError(RuntimeError):
    """Maintenance changed a table's row count or could not commit; details in the message."""


@dataclass
class TableReport:
    """What maintenance did to one table."""

    table: str
    version_before: int
    version_after: int
    rows_before: int
    rows_after: int
    active_files_before: int
    active_files_after: int
    stored_files_before: int
    stored_files_after: int
    pinned_versions: list[int] = field(default_factory=list)
    vacuumed_files: int = 0
    seconds: float = 0.0


def pinned_versions(lakehouse: Lakehouse) -> dict[str, set[int]]:
    """Table -> the versions lineage records read from it (see the module docstring)."""
    pins: dict[str, set[int]] = {name: set() for name in TABLES}
    for recorder, spec in TABLES.items():
        columns = [c for c in spec.column_names if c.endswith("_version") and c[:-8] in TABLES]
        if not columns or lakehouse.version(recorder) is None:
            continue
        frame = lakehouse.read(recorder, columns=columns)
        for column in columns:
            values = frame[column].drop_nulls().unique().to_list()
            pins[column[: -len("_version")]].update(int(v) for v in values)
    return pins


def stored_files(lakehouse: Lakehouse, table: str) -> int:
    """Data files in storage under the table (active or removed but not yet vacuumed)."""
    import pyarrow.fs as pafs

    fs, base = lakehouse.storage.filesystem()
    selector = pafs.FileSelector(f"{base}/{table}", recursive=True, allow_not_found=True)
    return sum(
        1
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and "/_delta_log/" not in info.path
    )


def maintain_table(
    lakehouse: Lakehouse,
    table: str,
    *,
    pinned: set[int],
    retention_hours: int,
    z_order_slide_id: bool = False,
    vacuum: bool = True,
) -> TableReport:
    """Compact, checkpoint and vacuum one table under the retention rule."""
    started = time.perf_counter()
    spec = lakehouse.spec(table)
    before = lakehouse.delta_table(table)
    version_before = before.version()
    rows_before = _rows(lakehouse, table)
    active_before = len(before.file_uris())
    stored_before = stored_files(lakehouse, table)
    if before.metadata().configuration.get("delta.enableExpiredLogCleanup") != "false":
        _retrying(table, lambda: lakehouse.delta_table(table).alter.set_table_properties(NO_LOG_CLEANUP))
    if z_order_slide_id and not spec.partition_by and "slide_id" in spec.column_names:
        _retrying(table, lambda: lakehouse.delta_table(table).optimize.z_order(["slide_id"]))
    else:
        _retrying(table, lambda: lakehouse.delta_table(table).optimize.compact())
    current = lakehouse.delta_table(table)
    current.create_checkpoint()
    vacuumed = 0
    if vacuum:
        vacuumed = len(
            current.vacuum(
                retention_hours=retention_hours,
                dry_run=False,
                enforce_retention_duration=False,
                keep_versions=sorted(pinned),
            )
        )
    after = lakehouse.delta_table(table)
    rows_after = _rows(lakehouse, table)
    if rows_after != rows_before:
        raise MaintenanceError(
            f"table {table!r}: {rows_before} rows before maintenance, {rows_after} after; "
            "investigate the commits since "
            f"v{version_before} before running maintenance again"
        )
    return TableReport(
        table=table,
        version_before=version_before,
        version_after=after.version(),
        rows_before=rows_before,
        rows_after=rows_after,
        active_files_before=active_before,
        active_files_after=len(after.file_uris()),
        stored_files_before=stored_before,
        stored_files_after=stored_files(lakehouse, table),
        pinned_versions=sorted(pinned),
        vacuumed_files=vacuumed,
        seconds=time.perf_counter() - started,
    )


def maintain(
    lakehouse: Lakehouse,
    *,
    retention_hours: int,
    tables: list[str] | None = None,
    z_order_slide_id: bool = False,
    vacuum: bool = True,
) -> list[TableReport]:
    """:func:`maintain_table` for every existing table (or ``tables``)."""
    pins = pinned_versions(lakehouse)
    names = tables or lakehouse.existing_tables()
    return [
        maintain_table(
            lakehouse,
            name,
            pinned=pins[name],
            retention_hours=retention_hours,
            z_order_slide_id=z_order_slide_id,
            vacuum=vacuum,
        )
        for name in names
        if lakehouse.version(name) is not None
    ]


def _rows(lakehouse: Lakehouse, table: str) -> int:
    with lakehouse.connect(views=False) as connection:
        from pathgen_dagster.lib.storage import sql_literal

        return connection.sql(
            f"SELECT count(*) FROM delta_scan({sql_literal(lakehouse.uri(table))})"
        ).fetchone()[0]


def _retrying(table: str, operation) -> None:
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            operation()
            return
        except CommitFailedError as error:
            if attempt == COMMIT_ATTEMPTS:
                raise MaintenanceError(
                    f"table {table!r}: maintenance lost {COMMIT_ATTEMPTS} commit races with "
                    "running writers; run it when no backfill is writing"
                ) from error
            time.sleep(0.5 * attempt)


def report_frame(reports: list[TableReport]) -> pl.DataFrame:
    """The reports as one frame (for metadata and printing)."""
    return pl.DataFrame([vars(report) for report in reports])
