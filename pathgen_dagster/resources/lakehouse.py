"""The lakehouse resource: where the Delta tables live, the one writer, and DuckDB SQL."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from pathgen_dagster.lib import delta, sql
from pathgen_dagster.lib.schemas import TABLES, TableSpec


class Lakehouse(dg.ConfigurableResource):
    """Delta tables under ``root`` (one folder per table), read and written through here.

    Attributes:
        root: folder holding one Delta table per stage; ``./lakehouse`` by default.
    """

    root: str = "lakehouse"

    def uri(self, table: str) -> str:
        """Absolute URI of ``table``'s Delta folder."""
        self.spec(table)
        return str((Path(self.root) / table).resolve())

    def spec(self, table: str) -> TableSpec:
        """The declared schema of ``table``."""
        try:
            return TABLES[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}; known tables: {sorted(TABLES)}") from None

    def write_slide(self, table: str, slide_id: str, rows: pa.Table | pl.DataFrame) -> int:
        """Replace ``slide_id``'s rows of ``table``; returns the committed version."""
        return delta.write_partition(self.uri(table), self.spec(table), slide_id, rows)

    def write_table(self, table: str, rows: pa.Table | pl.DataFrame) -> int:
        """Replace all of an unpartitioned ``table``; returns the committed version."""
        return delta.write_whole(self.uri(table), self.spec(table), rows)

    def append(self, table: str, rows: pa.Table | pl.DataFrame) -> int:
        """Append rows to an append-only ``table``; returns the committed version."""
        return delta.append(self.uri(table), self.spec(table), rows)

    def version(self, table: str) -> int | None:
        """Current Delta version of ``table``, None before its first write."""
        return delta.table_version(self.uri(table))

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
        arrow = DeltaTable(self.uri(table)).to_pyarrow_table(columns=columns, filters=filters)
        return pl.from_arrow(arrow)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one ``delta_scan`` view per existing table."""
        return sql.connect({name: self.uri(name) for name in TABLES})

    def sql(self, query: str) -> pl.DataFrame:
        """The answer of a DuckDB SQL ``query`` over every table, as a polars frame."""
        with self.connect() as connection:
            return connection.sql(query).pl()
