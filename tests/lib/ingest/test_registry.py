import re
import shutil
from pathlib import Path

from pathgen_dagster.lib.ingest.registry import sanitise_slide_id, scan
from pathgen_dagster.lib.ingest.samples import write_faulty_files
from tests.conftest import write_blank_slide

SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def test_clean_names_are_their_own_ids():
    assert sanitise_slide_id("TCGA-05-4244-01Z-00-DX1", "TCGA-05-4244-01Z-00-DX1.svs") == (
        "TCGA-05-4244-01Z-00-DX1"
    )


def test_unsafe_names_are_sanitised_stably_and_without_collisions():
    first = sanitise_slide_id("case 7, block #2; HE", "case 7, block #2; HE.svs")
    again = sanitise_slide_id("case 7, block #2; HE", "case 7, block #2; HE.svs")
    other = sanitise_slide_id("case 7, block #2, HE", "case 7, block #2, HE.svs")
    assert SAFE.match(first) and first == again and first != other
    assert first.startswith("case_7_block_2_HE-")
    long_id = sanitise_slide_id("x" * 200, "x" * 200 + ".svs")
    assert SAFE.match(long_id) and len(long_id) == 64
    assert sanitise_slide_id("a", "dir1/a.svs", collides=True) != sanitise_slide_id(
        "a", "dir2/a.svs", collides=True
    )


def test_scan_rejects_unreadable_files_and_keeps_the_rest(landing: Path, tmp_path: Path):
    faulty = write_faulty_files(landing)
    write_blank_slide(landing / "all glass.svs")
    shutil.copyfile(landing / "CMU-1-Small-Region.svs", landing / "CMU 1, copy #2; HE.svs")
    readable, rejected = scan(landing)
    ids = {f.slide_id for f in readable}
    assert {
        "CMU-1-Small-Region",
        "synthetic-aperio-40x",
        "synthetic-aperio-20x",
        "synthetic-generic-20x",
    } <= ids
    weird = [f for f in readable if f.path.name == "CMU 1, copy #2; HE.svs"]
    assert (
        weird and SAFE.match(weird[0].slide_id) and weird[0].slide_id.startswith("CMU_1_copy_2_HE-")
    )
    assert any(f.path.name == "all glass.svs" for f in readable)
    reasons = {r.path.name: r.reason for r in rejected}
    assert set(reasons) == {p.name for p in faulty}
    assert "0 bytes" in reasons["empty-upload.tiff"]
    assert "does not recognise" in reasons["notes-not-a-slide.svs"]
    assert "truncated" in reasons["truncated-scan.svs"]
