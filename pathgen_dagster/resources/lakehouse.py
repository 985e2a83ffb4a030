"""The lakehouse resource: where the Delta tables live, the one writer, and DuckDB SQL.

``root`` is a local folder or ``s3://bucket/prefix`` on any S3-compatible store. For an object
store, the endpoint and credentials are resource fields that :mod:`pathgen_dagster.definitions`
fills from ``dg.EnvVar`` (so they are never in code, run config or logs); every Delta read and
write, DuckDB's S3 secret and the artefact uploads (overlays, contact sheets, data docs,
exports) use them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from pydantic import Field

from pathgen_dagster.lib import delta, sql
from pathgen_dagster.lib.schemas import TABLES, TableSpec
from pathgen_dagster.lib.storage import Storage, StorageError

# Object-store fields and the environment variables they come from (when set).
LAKEHOUSE_ENV = {
    "s3_endpoint": "PATHGEN_S3_ENDPOINT",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_region": "AWS_REGION",
}


class Lakehouse(dg.ConfigurableResource):
    """Delta tables under ``root`` (one folder per table), read and written through here.

    Attributes:
        root: folder or ``s3://bucket/prefix`` holding one Delta table per stage.
        s3_endpoint: S3-compatible endpoint URL (MinIO, R2, a test server); None for AWS.
        aws_access_key_id, aws_secret_access_key: credentials (give them as ``dg.EnvVar``).
        aws_region: S3 region.
        s3_allow_http: allow a plain-http endpoint (local servers only).
    """

    root: str = "lakehouse"
    s3_endpoint: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = Field(default=None, repr=False)
    aws_region: str | None = None
    s3_allow_http: bool = False

    @classmethod
    def from_env(cls, root: str | None = None, *, deferred: bool = False) -> Lakehouse:
        """The lakehouse at ``root`` or ``PATHGEN_LAKEHOUSE`` (default ``./lakehouse``).

        For an object store: ``PATHGEN_S3_ENDPOINT`` (S3-compatible servers),
        ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and
        ``PATHGEN_S3_ALLOW_HTTP=1`` for a plain-http endpoint; unset ones are left to the
        engines' default credential chain. ``deferred`` (the code location) passes them as
        ``dg.EnvVar`` so Dagster resolves them at run time and never shows their values.
        """
        fields = {
            name: dg.EnvVar(variable) if deferred else os.environ[variable]
            for name, variable in LAKEHOUSE_ENV.items()
            if os.environ.get(variable)
        }
        if root is None:
            root = dg.EnvVar("PATHGEN_LAKEHOUSE") if deferred else os.environ.get(
                "PATHGEN_LAKEHOUSE", "lakehouse"
            )
        return cls(root=root, s3_allow_http=os.environ.get("PATHGEN_S3_ALLOW_HTTP") == "1", **fields)

    @property
    def storage(self) -> Storage:
        """Where the lakehouse lives and how to reach it."""
        return Storage(
            root=self.root,
            endpoint=self.s3_endpoint,
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key,
            region=self.aws_region,
            allow_http=self.s3_allow_http,
        )

    @property
    def is_object_store(self) -> bool:
        return self.storage.is_object_store

    @property
    def storage_options(self) -> dict[str, str] | None:
        """deltalake ``storage_options`` for every table (None for a local folder)."""
        return self.storage.delta_options()

    def uri(self, table: str) -> str:
        """Absolute path or URL of ``table``'s Delta folder."""
        self.spec(table)
        return self.storage.join(table)

    def location(self, relative: str) -> str:
        """Absolute path or URL of ``relative`` under the root (artefacts, exports)."""
        return self.storage.join(relative)

    def spec(self, table: str) -> TableSpec:
        """The declared schema of ``table``."""
        try:
            return TABLES[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}; known tables: {sorted(TABLES)}") from None

    def write_slide(self, table: str, slide_id: str, rows: pa.Table | pl.DataFrame) -> int:
        """Replace ``slide_id``'s rows of ``table``; returns the committed version."""
        with self._reaching(f"writing {table} for slide {slide_id}"):
            return delta.write_partition(
                self.uri(table), self.spec(table), slide_id, rows, self.storage_options
            )

    def write_table(self, table: str, rows: pa.Table | pl.DataFrame) -> int:
        """Replace all of an unpartitioned ``table``; returns the committed version."""
        with self._reaching(f"writing {table}"):
            return delta.write_whole(self.uri(table), self.spec(table), rows, self.storage_options)

    def append(self, table: str, rows: pa.Table | pl.DataFrame) -> int:
        """Append rows to an append-only ``table``; returns the committed version."""
        with self._reaching(f"appending to {table}"):
            return delta.append(self.uri(table), self.spec(table), rows, self.storage_options)

    def version(self, table: str) -> int | None:
        """Current Delta version of ``table``, None before its first write."""
        with self._reaching(f"reading the version of {table}"):
            return delta.table_version(self.uri(table), self.storage_options)

    def delta_table(self, table: str, version: int | None = None) -> DeltaTable:
        """``table`` as a deltalake ``DeltaTable`` (at ``version`` when given)."""
        with self._reaching(f"opening {table}"):
            return DeltaTable(
                self.uri(table), version=version, storage_options=self.storage_options
            )

    def read(
        self, table: str, *, slide_id: str | None = None, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """Rows of ``table`` (one slide's when ``slide_id`` is given); empty before any write."""
        spec = self.spec(table)
        if self.version(table) is None:
            return pl.DataFrame(
                schema=pl.Schema(pl.from_arrow(spec.schema.empty_table()).schema)
            ).select(columns or spec.column_names)
        filters = [("slide_id", "=", slide_id)] if slide_id is not None else None
        with self._reaching(f"reading {table}"):
            arrow = self.delta_table(table).to_pyarrow_table(columns=columns, filters=filters)
        return pl.from_arrow(arrow)

    def existing_tables(self) -> list[str]:
        """The declared tables that have been written at least once."""
        return [name for name in TABLES if self.version(name) is not None]

    def connect(self, *, views: bool = True) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection (S3 secret set for an object store), with one ``delta_scan``
        view per existing table unless ``views`` is false."""
        tables = {name: self.uri(name) for name in TABLES} if views else {}
        existing = (self.existing_tables() if views else []) if self.is_object_store else None
        with self._reaching("connecting DuckDB"):
            return sql.connect(tables, existing=existing, secret_sql=self.storage.duckdb_secret_sql())

    def sql(self, query: str) -> pl.DataFrame:
        """The answer of a DuckDB SQL ``query`` over every table, as a polars frame."""
        with self.connect() as connection:
            return connection.sql(query).pl()

    def put_artifact(self, relative: str, data: bytes) -> str:
        """Store ``data`` at ``root/relative`` (a PNG overlay, a sheet); return where."""
        return self.storage.put_bytes(relative, data)

    @contextlib.contextmanager
    def folder(self, relative: str, *, mirror: bool = False) -> Iterator[Path]:
        """A local folder standing for ``root/relative``, uploaded on success for an object
        store (see :meth:`Storage.folder`)."""
        with self.storage.folder(relative, mirror=mirror) as path:
            yield path

    @contextlib.contextmanager
    def _reaching(self, action: str) -> Iterator[None]:
        """Turn an object store's connection or permission failure into a StorageError that
        names the lakehouse URI (never the credentials). Local errors pass unchanged."""
        try:
            yield
        except (TableNotFoundError, CommitFailedError, StorageError, delta.SchemaMismatch):
            raise
        except (OSError, DeltaError) as error:
            if not self.is_object_store:
                raise
            raise self.storage.error(action, error) from None
