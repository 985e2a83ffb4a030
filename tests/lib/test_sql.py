"""DuckDB over the lakehouse: views for existing tables, and paths passed as SQL literals."""

import pytest

from pathgen_dagster.lib import delta, sql
from pathgen_dagster.resources.lakehouse import Lakehouse
from tests.lib.test_delta import SPEC, rows


def test_a_lakehouse_path_with_a_quote_works(tmp_path):
    root = tmp_path / "o'brien's lakehouse"
    lakehouse = Lakehouse(root=str(root))
    delta.write_partition(lakehouse.storage.join("slide_errors"), SPEC, "s1", rows("s1", 3))
    with sql.connect({"measures": lakehouse.storage.join("slide_errors")}) as connection:
        assert connection.sql("SELECT count(*) FROM measures").fetchone()[0] == 3


def test_the_lakehouse_path_cannot_inject_sql(tmp_path):
    # A path that would close the literal and run a statement if it were pasted in unquoted.
    root = tmp_path / "x'); CREATE TABLE pwned AS SELECT 42 AS answer; --"
    uri = str(root / "measures")
    delta.write_partition(uri, SPEC, "s1", rows("s1", 2))
    with sql.connect({"measures": uri}) as connection:
        assert connection.sql("SELECT count(*) FROM measures").fetchone()[0] == 2
        tables = connection.sql("SELECT table_name FROM information_schema.tables").fetchall()
        assert ("pwned",) not in tables


def test_an_object_store_uri_needs_the_list_of_existing_tables():
    with pytest.raises(ValueError, match="existing="):
        sql.connect({"tiles": "s3://bucket/lake/tiles"})
