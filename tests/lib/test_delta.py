import threading

import polars as pl
import pyarrow as pa
import pytest

from pathgen_dagster.lib import delta
from pathgen_dagster.lib.schemas import Column, TableSpec

SPEC = TableSpec(
    "measures",
    "test table",
    (
        Column("slide_id", pa.string(), "slide"),
        Column("tile", pa.int64(), "tile number"),
        Column("score", pa.float64(), "a score"),
        Column("label", pa.string(), "a label", nullable=True),
    ),
)


def rows(slide_id: str, n: int, score: float = 0.5) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "slide_id": [slide_id] * n,
            "tile": list(range(n)),
            "score": [score] * n,
            "label": ["x"] * n,
        }
    )


def read(uri: str) -> pl.DataFrame:
    from deltalake import DeltaTable

    return pl.from_arrow(DeltaTable(uri).to_pyarrow_table()).sort("slide_id", "tile")


def test_wrong_types_are_rejected_before_writing(tmp_path):
    uri = str(tmp_path / "t")
    bad_float_in_int = rows("A", 2).with_columns(pl.col("tile").cast(pl.Float64) + 0.5)
    with pytest.raises(delta.SchemaMismatch, match="'tile'"):
        delta.write_partition(uri, SPEC, "A", bad_float_in_int)
    bad_int_in_string = rows("A", 2).with_columns(pl.lit(3).alias("label"))
    with pytest.raises(delta.SchemaMismatch, match="'label'"):
        delta.write_partition(uri, SPEC, "A", bad_int_in_string)
    with pytest.raises(delta.SchemaMismatch, match="missing"):
        delta.write_partition(uri, SPEC, "A", rows("A", 2).drop("score"))
    assert delta.table_version(uri) is None


def test_rewriting_a_slide_is_idempotent_and_leaves_others(tmp_path):
    uri = str(tmp_path / "t")
    v1 = delta.write_partition(uri, SPEC, "A", rows("A", 3))
    once = read(uri)
    v2 = delta.write_partition(uri, SPEC, "A", rows("A", 3))
    assert read(uri).equals(once) and v2 == v1 + 1
    delta.write_partition(uri, SPEC, "B", rows("B", 2, score=0.9))
    delta.write_partition(uri, SPEC, "A", rows("A", 1, score=0.1))
    result = read(uri)
    assert result.filter(pl.col("slide_id") == "B")["score"].to_list() == [0.9, 0.9]
    assert result.filter(pl.col("slide_id") == "A")["score"].to_list() == [0.1]


def test_empty_partition_clears_a_slide(tmp_path):
    uri = str(tmp_path / "t")
    delta.write_partition(uri, SPEC, "A", rows("A", 2))
    delta.write_partition(uri, SPEC, "A", rows("A", 0))
    assert read(uri).is_empty()


def test_a_first_write_that_finds_the_table_created_by_another_slide_keeps_its_rows(
    tmp_path, monkeypatch
):
    # Two slides' first writes at once: B checked before A created the table, and writes
    # after. The old code overwrote the whole table then, and A's rows were gone.
    uri = str(tmp_path / "t")
    delta.write_partition(uri, SPEC, "A", rows("A", 2))
    monkeypatch.setattr(delta, "table_version", lambda *_: None)  # B's stale check
    delta.write_partition(uri, SPEC, "B", rows("B", 1))
    assert read(uri)["slide_id"].to_list() == ["A", "A", "B"]


def test_a_first_write_of_no_rows_creates_the_table(tmp_path):
    uri = str(tmp_path / "t")
    delta.write_partition(uri, SPEC, "A", rows("A", 0))
    assert delta.table_version(uri) is not None and read(uri).is_empty()


def test_rows_of_another_slide_are_refused(tmp_path):
    with pytest.raises(delta.SchemaMismatch, match="other slides"):
        delta.write_partition(str(tmp_path / "t"), SPEC, "A", rows("B", 1))


def test_concurrent_writers_on_the_same_slide_both_commit(tmp_path):
    uri = str(tmp_path / "t")
    delta.write_partition(uri, SPEC, "A", rows("A", 1))
    errors = []

    def writer(score: float) -> None:
        try:
            for _ in range(3):
                delta.write_partition(uri, SPEC, "A", rows("A", 2, score=score))
        except Exception as error:  # pragma: no cover - the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (0.25, 0.75)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    final = read(uri)
    assert len(final) == 2 and final["score"].n_unique() == 1
