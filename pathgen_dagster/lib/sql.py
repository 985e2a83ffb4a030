"""DuckDB over the lakehouse: every Delta table is a view named after its table.

DuckDB's ``delta`` extension is normally downloaded at run time, which this project never
does: the extension file comes from the ``duckdb-extension-delta`` package, whose version
must equal DuckDB's (FACTS.md). Views use ``delta_scan`` so a ``slide_id`` filter prunes to
that slide's files. On an object store the ``httpfs`` extension (from
``duckdb-extension-httpfs``, same rule) defines the S3 secret that ``delta_scan`` reads with.
Table URIs are passed as quoted SQL literals, so a path holding ``'`` works and cannot
inject SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path

import duckdb

from pathgen_dagster.lib.storage import sql_literal


class DeltaExtensionMissing(RuntimeError):
    """A packaged DuckDB extension does not match the installed DuckDB."""


def delta_extension_path() -> Path:
    """The packaged delta extension built for the installed DuckDB version."""
    return extension_path("delta")


def extension_path(name: str) -> Path:
    """The packaged DuckDB extension ``name`` built for the installed DuckDB version."""
    package = f"duckdb-extension-{name}"
    spec = find_spec(package.replace("-", "_"))
    version = duckdb.__version__
    if spec is None or not spec.submodule_search_locations:
        raise DeltaExtensionMissing(
            f"package {package} is not installed; pip install {package}=={version}"
        )
    path = (
        Path(spec.submodule_search_locations[0])
        / "extensions"
        / f"v{version}"
        / f"{name}.duckdb_extension"
    )
    if not path.exists():
        raise DeltaExtensionMissing(
            f"{package} carries no extension for DuckDB {version} ({path}); "
            f"install the duckdb and {package} versions pinned in pyproject.toml"
        )
    return path


def connect(
    tables: dict[str, str],
    database: str = ":memory:",
    *,
    existing: Iterable[str] | None = None,
    secret_sql: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a ``delta_scan`` view for each existing table.

    Args:
        tables: table name -> Delta table URI.
        database: DuckDB database file, in memory by default.
        existing: the tables that exist (the caller asked deltalake); None: a table exists
            when its local ``_delta_log`` folder does (local URIs only).
        secret_sql: ``CREATE SECRET`` statement for an object store (loads httpfs first).
    """
    connection = duckdb.connect(database)
    connection.execute(f"INSTALL {sql_literal(str(delta_extension_path()))}")
    connection.execute("LOAD delta")
    if secret_sql is not None:
        connection.execute(f"INSTALL {sql_literal(str(extension_path('httpfs')))}")
        connection.execute("LOAD httpfs")
        connection.execute(secret_sql)
    present = set(existing) if existing is not None else None
    for name, uri in tables.items():
        if present is None:
            if "://" in uri:
                raise ValueError(
                    f"table {name!r} at {uri}: pass existing=... for a non-local URI; "
                    "the local _delta_log check cannot see an object store"
                )
            exists = (Path(uri) / "_delta_log").is_dir()
        else:
            exists = name in present
        if exists:
            connection.execute(
                f"CREATE OR REPLACE VIEW {identifier(name)} AS "
                f"SELECT * FROM delta_scan({sql_literal(uri)})"
            )
    return connection


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
