import re
import shutil
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathgen_dagster.lib.ingest.registry import landing_files, sanitise_slide_id, scan, walk_landing
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
    assert weird and SAFE.match(weird[0].slide_id) and weird[0].slide_id.startswith("CMU_1_copy_2_HE-")
    assert any(f.path.name == "all glass.svs" for f in readable)
    reasons = {r.path.name: r.reason for r in rejected}
    assert set(reasons) == {p.name for p in faulty}
    assert "0 bytes" in reasons["empty-upload.tiff"]
    assert "a text file with a slide suffix" in reasons["notes-not-a-slide.svs"]
    # The byte counts: what the TIFF header promises and what the copy holds.
    size = (landing / "truncated-scan.svs").stat().st_size
    assert f"the file has {size:,}" in reasons["truncated-scan.svs"]
    assert "truncated: its TIFF header says the image data runs to" in reasons["truncated-scan.svs"]


def test_renamed_images_and_unsupported_vendors_say_what_they_are(tmp_path: Path):
    landing = tmp_path / "landing"
    landing.mkdir()
    picture = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(landing / "photo.svs", format="JPEG")
    Image.fromarray(picture).save(landing / "screenshot.ndpi", format="PNG")
    tifffile.imwrite(landing / "plain.tif", picture, photometric="rgb")  # strips, no pyramid
    (landing / "zeiss-scan.czi").write_bytes(b"ZISRAWFILE" + bytes(100))
    readable, rejected = scan(landing)
    reasons = {r.path.name: r.reason for r in rejected}
    assert readable == []
    assert "a JPEG photo renamed to .svs" in reasons["photo.svs"]
    assert "a PNG image renamed to .ndpi" in reasons["screenshot.ndpi"]
    assert "a plain TIFF" in reasons["plain.tif"]
    for name in ("photo.svs", "screenshot.ndpi", "plain.tif"):
        assert "re-save it as a tiled pyramidal TIFF" in reasons[name]
    assert "Zeiss CZI is a vendor format OpenSlide does not read" in reasons["zeiss-scan.czi"]


def test_symlink_policy_follows_only_links_into_allowed_roots(sample_landing: Path, tmp_path: Path):
    landing, elsewhere, archive = tmp_path / "landing", tmp_path / "elsewhere", tmp_path / "archive"
    for folder in (landing, elsewhere, archive):
        folder.mkdir()
    cmu = sample_landing / "CMU-1-Small-Region.svs"
    shutil.copyfile(cmu, elsewhere / "outside.svs")
    shutil.copyfile(cmu, archive / "archived.svs")
    shutil.copyfile(cmu, landing / "inside.svs")
    (landing / "link-outside.svs").symlink_to(elsewhere / "outside.svs")
    (landing / "link-archive.svs").symlink_to(archive / "archived.svs")
    (landing / "link-inside.svs").symlink_to(landing / "inside.svs")
    (landing / "dangling.svs").symlink_to(tmp_path / "gone.svs")
    files, skipped = walk_landing(landing, allowed_roots=(archive,))
    assert {f.path.name for f in files} == {"inside.svs", "link-archive.svs", "link-inside.svs"}
    reasons = {r.path.name: r.reason for r in skipped}
    assert set(reasons) == {"link-outside.svs", "dangling.svs"}
    assert "outside the landing zone and the allowed roots" in reasons["link-outside.svs"]
    assert "PATHGEN_ALLOWED_LINK_ROOTS" in reasons["link-outside.svs"]
    assert "dangling symlink" in reasons["dangling.svs"]
    # Without the archive as an allowed root, that link is skipped too.
    _, skipped = walk_landing(landing)
    assert {r.path.name for r in skipped} == {"link-outside.svs", "link-archive.svs", "dangling.svs"}


def test_manifest_matches_by_relative_path(tmp_path: Path):
    landing = tmp_path / "landing"
    (landing / "lab2").mkdir(parents=True)
    write_blank_slide(landing / "a.svs", width=1024, height=1024)
    write_blank_slide(landing / "lab2" / "a.svs", width=1024, height=1024)
    (landing / "manifest.csv").write_text("file_name,tissue_site\na.svs,skin\nlab2/a.svs,lung\n")
    sites = {str(f.path.relative_to(landing)): f.tissue_site for f in landing_files(landing)}
    assert sites == {"a.svs": "skin", "lab2/a.svs": "lung"}
    (landing / "manifest.csv").write_text("file_name,tissue_site\na.svs,skin\n")
    sites = {str(f.path.relative_to(landing)): f.tissue_site for f in landing_files(landing)}
    assert sites == {"a.svs": "skin", "lab2/a.svs": None}
