"""Table maintenance after 50 re-runs of one slide: fewer files, same rows, lineage intact."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pathgen_dagster.lib.maintenance.tables import pinned_versions, stored_files
from pathgen_dagster.lib.schemas import TABLES
from pathgen_dagster.lineage import trace
from pathgen_dagster.maintenance import lakehouse_maintenance
from tests.assets import test_training_pairs as pipeline
from tests.assets.test_training_pairs import SLIDE_A, complete, passing, write_stages

built_template = pipeline.built_template
built = pipeline.built
resources = pipeline.resources

RERUNS = 50


def cache_rows(slide_id: str, run: int) -> pa.Table:
    spec = TABLES["llm_responses"]
    rows = [
        complete(spec, {"slide_id": slide_id, "cache_key": f"k{run}-{i}", "text": f"answer {run}"})
        for i in range(3)
    ]
    return pa.Table.from_pylist(rows, schema=spec.schema)


def run_maintenance(lakehouse, retention_hours: int) -> dict:
    result = lakehouse_maintenance.execute_in_process(
        resources={"lakehouse": lakehouse},
        run_config={"ops": {"maintain_tables": {"config": {"retention_hours": retention_hours}}}},
    )
    assert result.success
    return result


@pytest.mark.slow
def test_maintenance_after_many_reruns_keeps_rows_and_pinned_lineage(built, resources):
    lakehouse = resources["lakehouse"]
    pair_id = passing(built[SLIDE_A])[0]
    before = trace(lakehouse, pair_id)
    pinned_captions = before.pair["captions_version"]
    # 50 re-runs of one slide: every stage rewritten, the response cache appended in small
    # commits; training_pairs is not rebuilt, so it still pins the first versions.
    intermediate = None
    for run in range(RERUNS):
        write_stages(lakehouse, SLIDE_A, caption_note=f" (re-run {run})")
        lakehouse.append("llm_responses", cache_rows(SLIDE_A, run))
        if run == RERUNS // 2:
            intermediate = lakehouse.version("captions")
    assert pinned_versions(lakehouse)["captions"] == {
        v for v in lakehouse.read("training_pairs")["captions_version"].to_list()
    }
    tables = lakehouse.existing_tables()
    rows_before = {t: lakehouse.read(t).height for t in tables}
    files_before = {t: len(lakehouse.delta_table(t).file_uris()) for t in tables}
    stored_before = {t: stored_files(lakehouse, t) for t in tables}
    assert files_before["llm_responses"] >= RERUNS

    # A week's retention: nothing removed recently may be deleted (readers may still use it).
    run_maintenance(lakehouse, retention_hours=168)
    assert DeltaTable(lakehouse.uri("captions"), version=intermediate).to_pyarrow_table().num_rows
    assert stored_files(lakehouse, "captions") >= stored_before["captions"]

    # Zero retention: only files that the current or a lineage-pinned version needs stay.
    run_maintenance(lakehouse, retention_hours=0)
    for table in tables:
        assert lakehouse.read(table).height == rows_before[table], table
    files_after = {t: len(lakehouse.delta_table(t).file_uris()) for t in tables}
    assert files_after["llm_responses"] < files_before["llm_responses"] / 10
    assert stored_files(lakehouse, "captions") < stored_before["captions"] / 10
    print(
        "\nfiles per table (active before -> after; stored before -> after):\n"
        + "\n".join(
            f"  {t:<22} {files_before[t]:>4} -> {files_after[t]:<4} "
            f"{stored_before[t]:>4} -> {stored_files(lakehouse, t)}"
            for t in tables
        )
    )
    # The pinned version is still readable: the lineage walk is the same as before.
    after = trace(lakehouse, pair_id)
    assert [(s.table, s.row) for s in after.steps] == [(s.table, s.row) for s in before.steps]
    # Pinned steps at the same versions; tiles (not pinned) at its current, compacted version.
    assert [(s.version, s.note) for s in after.steps if s.table != "tiles"] == [
        (s.version, s.note) for s in before.steps if s.table != "tiles"
    ]
    assert all("no longer readable" not in step.note for step in after.steps)
    pinned = DeltaTable(lakehouse.uri("captions"), version=pinned_captions).to_pyarrow_table()
    assert pinned.num_rows
    # An unpinned old version was vacuumed: the rule removed what it may remove.
    with pytest.raises(Exception, match="(?i)not found|no such file|does not exist"):
        DeltaTable(lakehouse.uri("captions"), version=intermediate).to_pyarrow_table()
