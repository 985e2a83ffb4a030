"""The lakehouse on an S3-compatible object store (a real moto server process)."""

from __future__ import annotations

import datetime
import uuid
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from pathgen_dagster.lib.delta import WRITE_ID_KEY
from pathgen_dagster.lib.storage import StorageError
from pathgen_dagster.resources.lakehouse import Lakehouse

pytestmark = pytest.mark.s3


def lakehouse_on(server, prefix: str, **changes) -> Lakehouse:
    fields = dict(
        root=f"s3://lake/{prefix}",
        s3_endpoint=server.endpoint,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        aws_region=server.region,
        s3_allow_http=True,
    )
    fields.update(changes)
    return Lakehouse(**fields)


def slide_errors(slide_id: str, n: int, note: str = "", table: str = "slide_errors") -> pl.DataFrame:
    from pathgen_dagster.lib.schemas import TABLES

    spec = TABLES[table]
    empty = pl.from_arrow(spec.schema.empty_table())
    rows = []
    for i in range(n):
        row = {}
        for name, dtype in empty.schema.items():
            if name == "slide_id":
                row[name] = slide_id
            elif dtype == pl.String:
                row[name] = f"{name}-{i}{note}"
            elif dtype.is_integer():
                row[name] = i
            elif dtype.is_float():
                row[name] = float(i)
            elif dtype == pl.Boolean:
                row[name] = False
            elif isinstance(dtype, pl.Datetime):
                row[name] = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
            else:
                row[name] = None
        rows.append(row)
    return pl.DataFrame(rows, schema=empty.schema)


def test_tables_sql_and_artefacts_live_in_the_bucket(s3_server):
    prefix = f"basic-{uuid.uuid4().hex[:6]}"
    lakehouse = lakehouse_on(s3_server, prefix)
    assert lakehouse.uri("tiles") == f"s3://lake/{prefix}/tiles"
    assert lakehouse.version("slide_errors") is None
    assert lakehouse.sql("SELECT 1 AS one")["one"].to_list() == [1]  # no views yet, no error
    v0 = lakehouse.write_slide("slide_errors", "slide-a", slide_errors("slide-a", 3))
    v1 = lakehouse.write_slide("slide_errors", "slide-b", slide_errors("slide-b", 2))
    assert (v0, v1) == (0, 1)
    assert lakehouse.read("slide_errors", slide_id="slide-a").height == 3
    # DuckDB reads the object store through httpfs with the same settings.
    counts = lakehouse.sql("SELECT slide_id, count(*) AS n FROM slide_errors GROUP BY 1 ORDER BY 1")
    assert counts.rows() == [("slide-a", 3), ("slide-b", 2)]
    # The response cache: small appends, as the caption agents make them.
    for batch in range(3):
        lakehouse.append("llm_responses", slide_errors("slide-a", 2, f"-{batch}", "llm_responses"))
    assert lakehouse.read("llm_responses", slide_id="slide-a").height == 6
    where = lakehouse.put_artifact("_artifacts/tiles/slide-a.png", b"\x89PNG fake bytes")
    assert where == f"s3://lake/{prefix}/_artifacts/tiles/slide-a.png"
    keys = s3_server.list_keys("lake", prefix)
    assert f"{prefix}/_artifacts/tiles/slide-a.png" in keys
    assert any(key.startswith(f"{prefix}/slide_errors/_delta_log/") for key in keys)
    with lakehouse.folder("exports/demo") as folder:
        (folder / "a.txt").write_text("a")
    with lakehouse.folder("exports/demo") as folder:  # replaces: a.txt is stale now
        (folder / "b.txt").write_text("b")
    # (pyarrow keeps an empty "folder/" marker when it deletes a folder's last object)
    exported = [key for key in s3_server.list_keys("lake", f"{prefix}/exports/demo") if not key.endswith("/")]
    assert exported == [f"{prefix}/exports/demo/b.txt"]


def test_concurrent_writers_record_their_own_exact_versions(s3_server):
    lakehouse = lakehouse_on(s3_server, f"race-{uuid.uuid4().hex[:6]}")
    lakehouse.write_slide("slide_errors", "seed", slide_errors("seed", 1))
    # 6 writers on 6 different slides and 4 racing overwrites of one slide, at once.
    jobs = [(f"slide-{i}", 2, "") for i in range(6)] + [("same", 3, f"-w{i}") for i in range(4)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        versions = list(
            pool.map(
                lambda job: lakehouse.write_slide(
                    "slide_errors", job[0], slide_errors(job[0], job[1], job[2])
                ),
                jobs,
            )
        )
    assert len(set(versions)) == len(jobs)  # no two writers claim one commit
    table = lakehouse.delta_table("slide_errors")
    history = {entry["version"]: entry for entry in table.history()}
    for (slide_id, _, note), version in zip(jobs, versions, strict=True):
        # The version a writer returned is the commit that wrote its own rows.
        at = lakehouse.delta_table("slide_errors", version=version)
        rows = pl.from_arrow(at.to_pyarrow_table(filters=[("slide_id", "=", slide_id)]))
        assert rows.height == (3 if slide_id == "same" else 2)
        assert WRITE_ID_KEY in history[version]
        string_column = next(c for c, t in rows.schema.items() if t == pl.String and c != "slide_id")
        assert rows[string_column].str.ends_with(f"1{note}").any()
    final = lakehouse.read("slide_errors")
    assert final.filter(pl.col("slide_id") == "same").height == 3  # one winner, not 12 rows
    assert final.height == 1 + 6 * 2 + 3


def test_unreachable_endpoint_names_the_lakehouse_and_writes_nothing(s3_server):
    lakehouse = lakehouse_on(s3_server, "down", s3_endpoint="http://127.0.0.1:9")
    with pytest.raises(StorageError) as raised:
        lakehouse.write_slide("slide_errors", "slide-a", slide_errors("slide-a", 1))
    message = str(raised.value)
    assert "s3://lake/down" in message and "unreachable" in message
    assert s3_server.secret_access_key not in message
    assert s3_server.list_keys("lake", "down/") == []


def test_bad_credentials_name_the_lakehouse_and_write_nothing(s3_server):
    lakehouse = lakehouse_on(s3_server, "badkey", aws_secret_access_key="not-the-secret")
    for action in (
        lambda: lakehouse.write_slide("slide_errors", "slide-a", slide_errors("slide-a", 1)),
        lambda: lakehouse.put_artifact("_artifacts/x.png", b"x"),
    ):
        with pytest.raises(StorageError) as raised:
            action()
        message = str(raised.value)
        assert "s3://lake/badkey" in message and "credentials" in message, message
        assert "not-the-secret" not in message
    assert s3_server.list_keys("lake", "badkey/") == []
