"""DuckDB over the lakehouse: every Delta table is a view named after its table.

DuckDB's ``delta`` extension is normally downloaded at run time, which this project never
does: the extension file comes from the ``duckdb-extension-delta`` package, whose version
must equal DuckDB's (FACTS.md). Views use ``delta_scan`` so a ``slide_id`` filter prunes to
that slide's files.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import duckdb


class DeltaExtensionMissing(RuntimeError):
    """The packaged DuckDB delta extension does not match the installed DuckDB."""


def delta_extension_path() -> Path:
    """The packaged delta extension built for the installed DuckDB version."""
    spec = find_spec("duckdb_extension_delta")
    version = duckdb.__version__
    if spec is None or not spec.submodule_search_locations:
        raise DeltaExtensionMissing(
            "package duckdb-extension-delta is not installed; "
            f"pip install duckdb-extension-delta=={version}"
        )
    path = (
        Path(spec.submodule_search_locations[0])
        / "extensions"
        / f"v{version}"
        / "delta.duckdb_extension"
    )
    if not path.exists():
        raise DeltaExtensionMissing(
            f"duckdb-extension-delta carries no extension for DuckDB {version} ({path}); "
            "install the duckdb and duckdb-extension-delta versions pinned in pyproject.toml"
        )
    return path


def connect(tables: dict[str, str], database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a ``delta_scan`` view for each existing table.

    Args:
        tables: table name -> Delta table URI; URIs with no table yet get no view.
        database: DuckDB database file, in memory by default.
    """
    connection = duckdb.connect(database)
    connection.execute(f"INSTALL '{delta_extension_path()}'")
    connection.execute("LOAD delta")
    for name, uri in tables.items():
        if (Path(uri) / "_delta_log").is_dir():
            connection.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM delta_scan('{uri}')"
            )
    return connection
