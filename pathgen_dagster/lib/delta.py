"""The one Delta writer: schema-checked, per-slide idempotent, race-retrying.

Every table write in the project goes through :func:`write_partition` or
:func:`write_whole`. They refuse a frame whose columns or types differ from the table's
:class:`~pathgen_dagster.lib.schemas.TableSpec` (deltalake would silently cast them), replace
exactly one slide's rows, retry a commit that lost a race with another writer, and return the
committed table version so rows downstream can record what they were built from.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from pathgen_dagster.lib.schemas import TableSpec

MAX_COMMIT_ATTEMPTS = 8
# Commit metadata key carrying the id of the write that made a commit: the writer finds its
# own version in ``history()`` by it, exact even when other writers commit in between.
WRITE_ID_KEY = "pathgen.write_id"
# How far back in history a writer looks for its own commit (a writer that lost more races
# than this in between would raise rather than guess).
HISTORY_LOOKBACK = 200


class SchemaMismatch(ValueError):
    """A frame does not match its table's declared schema; nothing was written."""


def conform(spec: TableSpec, rows: pa.Table | pl.DataFrame) -> pa.Table:
    """``rows`` as an Arrow table in the spec's column order, or SchemaMismatch.

    Column names must match exactly. A type must be identical, or a cast that keeps every
    value: an all-null column, large/small string, binary and list variants (what polars
    produces), integer to integer when every value fits (checked), and float width (float64
    embeddings stored as float32). Anything else (a float into an integer column, numbers
    into a string column) is refused, which deltalake itself would silently cast.
    """
    table = rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows
    expected = spec.schema
    missing = set(expected.names) - set(table.column_names)
    extra = set(table.column_names) - set(expected.names)
    if missing or extra:
        raise SchemaMismatch(
            f"table {spec.name!r}: missing columns {sorted(missing)}, "
            f"unexpected columns {sorted(extra)}"
        )
    columns = []
    for field in expected:
        column = table.column(field.name)
        if not _lossless(column.type, field.type):
            raise SchemaMismatch(
                f"table {spec.name!r}: column {field.name!r} has type {column.type}, "
                f"the schema says {field.type}; refusing a cast that could lose data"
            )
        if not field.nullable and column.null_count:
            raise SchemaMismatch(
                f"table {spec.name!r}: column {field.name!r} has {column.null_count} nulls "
                "but is declared non-null"
            )
        try:
            columns.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise SchemaMismatch(
                f"table {spec.name!r}: column {field.name!r} cannot be stored as "
                f"{field.type}: {error}"
            ) from None
    return pa.Table.from_arrays(columns, schema=expected)


def _lossless(actual: pa.DataType, declared: pa.DataType) -> bool:
    if actual == declared or pa.types.is_null(actual):
        return True
    for family in (pa.types.is_integer, pa.types.is_floating):
        if family(actual) and family(declared):
            return True
    same_family = [
        (pa.types.is_string, pa.types.is_large_string),
        (pa.types.is_binary, pa.types.is_large_binary),
    ]
    for small, large in same_family:
        if (small(actual) or large(actual)) and (small(declared) or large(declared)):
            return True
    if pa.types.is_timestamp(actual) and pa.types.is_timestamp(declared):
        return actual.unit == declared.unit and (actual.tz or "UTC") == (declared.tz or "UTC")
    if _is_list(actual) and _is_list(declared):
        return _lossless(actual.value_type, declared.value_type) and (
            not pa.types.is_fixed_size_list(declared)
            or getattr(actual, "list_size", None) in (None, declared.list_size)
        )
    return False


def _is_list(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    )


StorageOptions = dict[str, str] | None


def table_version(uri: str, storage_options: StorageOptions = None) -> int | None:
    """Current version of the Delta table at ``uri``, or None when it does not exist yet."""
    try:
        return DeltaTable(uri, storage_options=storage_options).version()
    except TableNotFoundError:
        return None


def write_partition(
    uri: str,
    spec: TableSpec,
    slide_id: str,
    rows: pa.Table | pl.DataFrame,
    storage_options: StorageOptions = None,
) -> int:
    """Replace exactly ``slide_id``'s rows of the table at ``uri``; return the new version.

    Every row must belong to ``slide_id``. Zero rows is valid: the slide's old rows are
    removed and the (empty) result is committed, so "this slide has no tiles" is recorded.
    """
    table = conform(spec, rows)
    if table.num_rows and set(table.column("slide_id").to_pylist()) != {slide_id}:
        raise SchemaMismatch(f"table {spec.name!r}: rows of other slides in partition {slide_id!r}")
    predicate = f"slide_id = '{_quote(slide_id)}'"
    return _commit(uri, table, spec, predicate=predicate, storage_options=storage_options)


def write_whole(
    uri: str, spec: TableSpec, rows: pa.Table | pl.DataFrame, storage_options: StorageOptions = None
) -> int:
    """Replace the whole (unpartitioned) table at ``uri``; return the new version."""
    return _commit(uri, conform(spec, rows), spec, predicate=None, storage_options=storage_options)


def append(
    uri: str, spec: TableSpec, rows: pa.Table | pl.DataFrame, storage_options: StorageOptions = None
) -> int:
    """Append rows (for append-only tables such as the response cache); return the version."""
    table = conform(spec, rows)
    return _commit(
        uri, table, spec, predicate=None, mode="append", storage_options=storage_options
    )


def _commit(
    uri: str,
    table: pa.Table,
    spec: TableSpec,
    *,
    predicate: str | None,
    mode: str = "overwrite",
    storage_options: StorageOptions = None,
) -> int:
    if storage_options is None and "://" not in uri:
        Path(uri).mkdir(parents=True, exist_ok=True)
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        write_id = uuid.uuid4().hex
        try:
            exists = table_version(uri, storage_options) is not None
            write_deltalake(
                uri,
                table,
                mode=mode,
                predicate=predicate if exists else None,
                partition_by=list(spec.partition_by) or None,
                schema_mode=None,
                storage_options=storage_options,
                commit_properties=CommitProperties(custom_metadata={WRITE_ID_KEY: write_id}),
            )
            return committed_version(uri, write_id, storage_options)
        except CommitFailedError:
            if attempt == MAX_COMMIT_ATTEMPTS:
                raise
            # Another writer committed first (optimistic concurrency): back off and retry.
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def committed_version(uri: str, write_id: str, storage_options: StorageOptions = None) -> int:
    """The version of the commit tagged ``write_id`` (this writer's own, not the latest).

    Reads the commit files themselves, newest first from the version seen after the write:
    ``DeltaTable.history()`` numbers its entries from the snapshot it loaded, and right after
    concurrent commits those numbers were seen off by one or more (deltalake 1.6.6, moto S3).
    """
    latest = DeltaTable(uri, storage_options=storage_options).version()
    handler = DeltaStorageHandler(uri, storage_options)
    for version in range(latest, max(-1, latest - HISTORY_LOOKBACK), -1):
        with handler.open_input_stream(f"_delta_log/{version:020d}.json") as stream:
            for line in stream.read().decode().splitlines():
                if '"commitInfo"' in line and json.loads(line)["commitInfo"].get(WRITE_ID_KEY) == write_id:
                    return version
    raise RuntimeError(
        f"Delta table {uri}: commit {write_id} is not among the last {HISTORY_LOOKBACK} "
        "commits; more writers committed in between than the writer looks back over"
    )


def _quote(value: str) -> str:
    return value.replace("'", "''")
