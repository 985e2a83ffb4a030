"""The one Delta writer: schema-checked, per-slide idempotent, race-retrying.

Every table write in the project goes through :func:`write_partition` or
:func:`write_whole`. They refuse a frame whose columns or types differ from the table's
:class:`~pathgen_dagster.lib.schemas.TableSpec` (deltalake would silently cast them), replace
exactly one slide's rows, retry a commit that lost a race with another writer, and return the
committed table version so rows downstream can record what they were built from.
"""

from __future__ import annotations

import json
import os
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


LOW_SPACE_BYTES = 1 << 20
"""Free space under which a failed write is put down to a full disk."""


class StorageError(OSError):
    """A write the file system refused (disk full, read-only, no permission); the message
    names the table, the slide, the path and the fix, and partial files are removed."""


# (what the OS said, as delta-rs quotes it) -> (what happened, the fix)
_STORAGE_FAULTS = (
    (("os error 28", "No space left on device"), "the disk is full", "free space on it"),
    (("os error 30", "Read-only file system"), "the file system is read-only", "remount it read-write"),
    (("os error 13", "Permission denied"), "permission denied", "make it writable for this user"),
    (("os error 122", "Disk quota exceeded"), "the disk quota is exceeded", "raise the quota"),
)


def _file_system_state(uri: str) -> str | None:
    """What the file system under ``uri`` says when delta-rs did not (a failed commit
    reads only "Generic LocalFileSystem error"): read-only, full, or None."""
    path = Path(uri)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return "Read-only file system"
    if stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES:
        return "No space left on device"
    return None


def _data_files(folders: list[Path]) -> set[Path]:
    return {path for folder in folders if folder.is_dir() for path in folder.glob("*.parquet")}


def _storage_error(
    error: Exception, uri: str, spec: TableSpec, slide_ids: list[str], removed: int
) -> StorageError | None:
    text = str(error)
    for needles, what, fix in _STORAGE_FAULTS:
        if any(needle in text for needle in needles) or needles[1] == _file_system_state(uri):
            slides = ", ".join(slide_ids[:3]) + (" ..." if len(slide_ids) > 3 else "") or "-"
            return StorageError(
                f"table {spec.name!r} (slide {slides}): {what} at {uri}; nothing was committed"
                f" and {removed} partial file(s) were removed. Fix: {fix} ({uri}), then re-run"
                f" the slide. delta-rs said: {text[:300]}"
            )
    return None


def _commit(
    uri: str,
    table: pa.Table,
    spec: TableSpec,
    *,
    predicate: str | None,
    mode: str = "overwrite",
    storage_options: StorageOptions = None,
) -> int:
    has_slide = "slide_id" in table.column_names
    slide_ids = sorted(set(table.column("slide_id").to_pylist())) if has_slide else []
    local = storage_options is None and "://" not in uri
    if local:
        try:
            Path(uri).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _storage_error(error, uri, spec, slide_ids, 0) or error from error
    # The local folders this write puts data files into, to remove what a failed write left.
    if not local:
        folders = []
    elif list(spec.partition_by) == ["slide_id"]:
        folders = [Path(uri) / f"slide_id={slide}" for slide in slide_ids]
    else:
        folders = [Path(uri)]
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        before = _data_files(folders)
        write_id = uuid.uuid4().hex
        try:
            exists = table_version(uri, storage_options) is not None
            # A slide's first write to a table that does not exist yet appends: there is
            # nothing of the slide's to replace, and if another slide's writer creates the
            # table in between, an overwrite without the predicate would drop that slide's
            # rows (seen on S3 with two slides at once: one slide's `slides` row vanished).
            write_deltalake(
                uri,
                table,
                mode=mode if exists or predicate is None else "append",
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
        except Exception as error:
            if not local or _storage_error(error, uri, spec, slide_ids, 0) is None:
                raise
            # Nothing was committed: files this attempt wrote are referenced by no version.
            removed = _remove_unreferenced(uri, _data_files(folders) - before)
            raise _storage_error(error, uri, spec, slide_ids, removed) from error
    raise AssertionError("unreachable")


def _remove_unreferenced(uri: str, created: set[Path]) -> int:
    """Deletes the files a failed write created that no table version references."""
    if not created:
        return 0
    try:
        referenced = {Path(f.removeprefix("file://")) for f in DeltaTable(uri).file_uris()}
    except TableNotFoundError:
        referenced = set()
    removed = 0
    for path in created - referenced:
        try:
            path.unlink()
            removed += 1
        except OSError:  # a read-only file system keeps what it refused to finish
            pass
    return removed


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
