"""SQL model loader: discovery, refs, dependency order, placeholder rendering, bad files."""

from pathlib import Path

import pyarrow as pa
import pytest

from pathgen_dagster.lib.dataset.sql_models import (
    MODELS_DIR,
    SqlModelError,
    dependency_order,
    discover,
    parse,
    render,
)
from pathgen_dagster.lib.schemas import TABLES, Column, TableSpec


def spec(name: str, *, partitioned: bool = True) -> TableSpec:
    return TableSpec(
        name,
        f"test table {name}",
        (Column("slide_id", pa.string(), "slide"), Column("n", pa.int64(), "a number")),
        partition_by=("slide_id",) if partitioned else (),
    )


SPECS = {
    "source": spec("source"),
    "per_slide": spec("per_slide"),
    "summary": spec("summary", partitioned=False),
    "report": spec("report", partitioned=False),
}


def write(folder: Path, name: str, sql: str) -> Path:
    path = folder / f"{name}.sql"
    path.write_text(sql)
    return path


def test_shipped_models_are_discovered_in_dependency_order():
    models = discover()
    names = [model.name for model in models]
    assert {"training_pairs", "dataset_stats", "quarantine_report"} <= set(names)
    assert names.index("training_pairs") < names.index("dataset_stats")
    by_name = {model.name: model for model in models}
    pairs = by_name["training_pairs"]
    assert pairs.partitioned and pairs.path.parent == MODELS_DIR
    assert set(pairs.refs) == {
        "slides",
        "patches",
        "descriptions",
        "revised_descriptions",
        "captions",
        "caption_quality",
    }
    assert set(pairs.versions) == set(pairs.refs)
    assert not by_name["dataset_stats"].partitioned
    assert "training_pairs" in by_name["dataset_stats"].refs
    assert by_name["quarantine_report"].refs == ("caption_quality", "slides")
    assert all(model.spec is TABLES[model.name] for model in models)
    assert pairs.description.startswith("Image-caption pairs that passed")


def test_dependency_order_follows_refs_between_models(tmp_path: Path):
    write(tmp_path, "report", "SELECT * FROM {{ ref('summary') }}")
    write(
        tmp_path,
        "summary",
        "SELECT slide_id, count(*) AS n FROM {{ ref('per_slide') }} GROUP BY 1",
    )
    write(
        tmp_path,
        "per_slide",
        "SELECT * FROM {{ ref('source') }} AS s WHERE {{ partition_filter('s.slide_id') }}",
    )
    names = [model.name for model in discover(tmp_path, specs=SPECS)]
    assert names == ["per_slide", "summary", "report"]


def test_a_cycle_is_named(tmp_path: Path):
    write(tmp_path, "summary", "SELECT * FROM {{ ref('report') }}")
    write(tmp_path, "report", "SELECT * FROM {{ ref('summary') }}")
    with pytest.raises(SqlModelError, match="cycle: report -> summary -> report"):
        discover(tmp_path, specs=SPECS)


@pytest.mark.parametrize(
    ("name", "sql", "message"),
    [
        ("unknown", "SELECT 1 FROM {{ ref('source') }}", "add a TableSpec named 'unknown'"),
        ("summary", "SELECT * FROM {{ ref('nowhere') }}", "names no declared table"),
        ("summary", "SELECT * FROM {{ source('source') }}", "unknown placeholder"),
        ("summary", "SELECT * FROM {{ ref(source) }}", "could not be parsed"),
        ("summary", "SELECT * FROM source", "reads no table"),
        ("summary", "DELETE FROM {{ ref('source') }}", "one SELECT"),
        ("summary", "SELECT 1 FROM {{ ref('source') }}; SELECT 2", "one statement"),
        ("summary", "SELECT {{ version('report') }} FROM {{ ref('source') }}", "does not ref"),
        ("per_slide", "SELECT * FROM {{ ref('source') }}", "partition_filter"),
        (
            "summary",
            "SELECT * FROM {{ ref('source') }} s WHERE {{ partition_filter('s.slide_id') }}",
            "not partitioned",
        ),
        (
            "per_slide",
            "SELECT * FROM {{ ref('source') }} WHERE {{ partition_filter('1=1 OR x') }}",
            "needs a column",
        ),
    ],
)
def test_malformed_models_are_refused_with_the_fix(tmp_path, name, sql, message):
    with pytest.raises(SqlModelError, match=message):
        parse(write(tmp_path, name, sql), specs=SPECS)


def test_comments_and_string_semicolons_are_allowed(tmp_path: Path):
    model = parse(
        write(
            tmp_path,
            "summary",
            "-- Sums per slide.\n-- Second line; with a semicolon.\n"
            "SELECT slide_id, 'a;b' AS t FROM {{ ref('source') }};\n",
        ),
        specs=SPECS,
    )
    assert model.description == "Sums per slide.\nSecond line; with a semicolon."


def test_render_per_slide_and_full_rebuild(tmp_path: Path):
    model = parse(
        write(
            tmp_path,
            "per_slide",
            "SELECT slide_id, {{ version('source') }} AS v, {{ run_id }} AS r, "
            "{{ config_hash }} AS h FROM {{ ref('source') }} AS s "
            "WHERE {{ partition_filter('s.slide_id') }}",
        ),
        specs=SPECS,
    )
    relations = {"source": "delta_scan('/lake/source', version => 4)"}
    one_slide = render(
        model,
        relations=relations,
        versions={"source": 4},
        partition_key="it's-a-slide",
        run_id="run-1",
    )
    assert "FROM delta_scan('/lake/source', version => 4) AS s" in one_slide
    assert "WHERE s.slide_id = 'it''s-a-slide'" in one_slide
    assert "CAST(4 AS BIGINT) AS v, 'run-1' AS r" in one_slide
    assert f"'{model.sql_hash}' AS h" in one_slide
    full = render(
        model, relations=relations, versions={"source": 4}, partition_key=None, run_id="r"
    )
    assert "WHERE TRUE" in full
    missing = render(model, relations=relations, versions={}, partition_key=None, run_id="r")
    assert "CAST(NULL AS BIGINT) AS v" in missing
    with pytest.raises(SqlModelError, match="no relation given"):
        render(model, relations={}, versions={}, partition_key=None, run_id="r")


def test_sql_hash_changes_with_the_file(tmp_path: Path):
    sql = "SELECT * FROM {{ ref('source') }}"
    first = parse(write(tmp_path, "summary", sql), specs=SPECS)
    second = parse(write(tmp_path, "summary", sql + " ORDER BY 1"), specs=SPECS)
    assert first.sql_hash != second.sql_hash and len(first.sql_hash) == 16


def test_dependency_order_is_stable_without_refs_between_models(tmp_path: Path):
    for name in ("report", "summary"):
        write(tmp_path, name, "SELECT * FROM {{ ref('source') }}")
    models = [parse(path, specs=SPECS) for path in sorted(tmp_path.glob("*.sql"))]
    assert [m.name for m in dependency_order(reversed(models))] == ["report", "summary"]
