"""Export writers round-trip: PathGen JSON, open_clip image folder + CSV, WebDataset shards."""

import csv
import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from pathgen_dagster.lib.dataset.exports import (
    ExportError,
    read_manifest,
    replacing,
    verify,
    write_image_folder_csv,
    write_manifest,
    write_pathgen_json,
    write_webdataset,
)
from pathgen_dagster.lib.ingest.wsi import open_slide, read_rgb

SIZE = 336


@pytest.fixture(scope="module")
def pair_rows(sample_landing: Path) -> list[dict]:
    """Five pairs whose images are real H&E regions of the CMU slide, as JPEG bytes."""
    rows = []
    with open_slide(sample_landing / "CMU-1-Small-Region.svs") as slide:
        for index, (x, y) in enumerate([(0, 0), (336, 0), (672, 336), (1008, 672), (0, 1344)]):
            buffer = io.BytesIO()
            Image.fromarray(read_rgb(slide, x, y, 0, (SIZE, SIZE))).save(buffer, "JPEG", quality=90)
            image = buffer.getvalue()
            slide_id = "CMU-1-Small-Region" if index < 3 else "other.slide"
            rows.append(
                {
                    "pair_id": f"{slide_id}_x{x}_y{y}_s{SIZE}",
                    "slide_id": slide_id,
                    "patch_id": f"{slide_id}_x{x}_y{y}_s{SIZE}",
                    "x": x,
                    "y": y,
                    "level": 0,
                    "size_px": SIZE,
                    "mpp": 0.499,
                    "tissue_site": "skin",
                    "image_sha256": hashlib.sha256(image).hexdigest(),
                    "caption": f"H&E patch {index}: moderately cellular tissue;\ttab\nand newline",
                    "clip_tokens": 20 + index,
                    "quality_score": 1.0,
                    "ruleset_version": "rules-v1",
                    "slide_file_name": f"{slide_id}.svs",
                    "slide_sha256": "ab" * 32,
                    "summary_model_id": "grounded-v1",
                    "image_jpeg": image,
                }
            )
    return rows


def test_pathgen_json_has_the_public_release_shape(tmp_path: Path, pair_rows):
    summary = write_pathgen_json(pair_rows, tmp_path)
    records = json.loads((tmp_path / "pathgen.json").read_text())
    assert summary.pairs == len(records) == 5 and summary.slides == 2
    assert records[0] == {
        "wsi_id": "CMU-1-Small-Region",
        "position": ["0", "0"],
        "caption": pair_rows[0]["caption"],
        "file_id": "ab" * 32,
    }
    assert records[3]["wsi_id"] == "other.slide" and records[3]["position"] == ["1008", "672"]
    assert (
        summary.files[0].sha256
        == hashlib.sha256((tmp_path / "pathgen.json").read_bytes()).hexdigest()
    )


def test_pathgen_json_of_no_pairs_is_an_empty_array(tmp_path: Path):
    assert write_pathgen_json([], tmp_path).pairs == 0
    assert json.loads((tmp_path / "pathgen.json").read_text()) == []


def test_image_folder_csv_reads_back_the_way_open_clip_reads_it(tmp_path: Path, pair_rows):
    summary = write_image_folder_csv(pair_rows, tmp_path)
    assert summary.pairs == summary.counts["images"] == 5
    # open_clip_train.data.CsvDataset: pd.read_csv(file, sep="\t"), df["filepath"], df["title"]
    frame = pd.read_csv(tmp_path / "train.csv", sep="\t")
    assert frame["title"].tolist() == [row["caption"] for row in pair_rows]
    for path, row in zip(frame["filepath"], pair_rows, strict=True):
        assert Path(path).is_absolute()
        image = Image.open(str(path))
        assert image.size == (SIZE, SIZE) and image.format == "JPEG"
        assert Path(path).read_bytes() == row["image_jpeg"]
    listed = (tmp_path / "images.sha256").read_text().splitlines()
    assert len(listed) == 5
    for line in listed:
        digest, relative = line.split("  ")
        assert hashlib.sha256((tmp_path / relative).read_bytes()).hexdigest() == digest


def test_webdataset_shards_read_back_with_webdataset(tmp_path: Path, pair_rows):
    summary = write_webdataset(pair_rows, tmp_path, samples_per_shard=2)
    shards = sorted(str(p) for p in tmp_path.glob("pathgen-*.tar"))
    assert len(shards) == summary.counts["shards"] == 3
    assert json.loads((tmp_path / "sizes.json").read_text()) == {
        "pathgen-000000.tar": 2,
        "pathgen-000001.tar": 2,
        "pathgen-000002.tar": 1,
    }
    # The pipeline open_clip uses: decode images to PIL, pair them with their text.
    dataset = (
        wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json")
    )
    samples = list(dataset)
    assert len(samples) == 5
    for (image, caption, metadata), row in zip(samples, pair_rows, strict=True):
        assert isinstance(image, Image.Image) and image.size == (SIZE, SIZE)
        assert caption == row["caption"]
        assert metadata["pair_id"] == row["pair_id"] and metadata["x"] == row["x"]
    raw = list(wds.WebDataset(shards, shardshuffle=False))
    assert [hashlib.sha256(s["jpg"]).hexdigest() for s in raw] == [
        r["image_sha256"] for r in pair_rows
    ]


def test_webdataset_is_byte_identical_on_rewrite(tmp_path: Path, pair_rows):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = write_webdataset(pair_rows, tmp_path / "a", samples_per_shard=3)
    second = write_webdataset(pair_rows, tmp_path / "b", samples_per_shard=3)
    assert [f.sha256 for f in first.files] == [f.sha256 for f in second.files]
    with tarfile.open(tmp_path / "a" / "pathgen-000000.tar") as archive:
        assert {member.mtime for member in archive.getmembers()} == {0}


def test_a_changed_image_stops_the_export(tmp_path: Path, pair_rows):
    tampered = [dict(row) for row in pair_rows]
    tampered[2]["image_jpeg"] = pair_rows[1]["image_jpeg"]
    with pytest.raises(ExportError, match="CMU-1-Small-Region_x672_y336.*re-materialize"):
        write_webdataset(tampered, tmp_path)
    tampered[2]["image_jpeg"] = None
    with pytest.raises(ExportError, match="no image in `patches`"):
        write_image_folder_csv(tampered, tmp_path)


def test_replacing_keeps_the_old_export_when_the_new_one_fails(tmp_path: Path, pair_rows):
    target = tmp_path / "exports" / "pathgen_json"
    with replacing(target) as staging:
        summary = write_pathgen_json(pair_rows, staging)
        write_manifest(staging, summary, source_versions={"training_pairs": 3}, run_id="r1")
    assert read_manifest(target)["source_versions"] == {"training_pairs": 3}
    with pytest.raises(RuntimeError), replacing(target) as staging:
        write_pathgen_json(pair_rows[:1], staging)
        raise RuntimeError("writer crashed")
    assert read_manifest(target)["pairs"] == 5 and verify(target) == []
    assert [p.name for p in target.parent.iterdir()] == ["pathgen_json"]
    (target / "pathgen.json").write_text("[]")
    assert verify(target) == ["pathgen.json: changed since export"]


def test_csv_captions_with_quotes_survive(tmp_path: Path, pair_rows):
    rows = [dict(pair_rows[0], caption='A "quoted" caption, with comma')]
    write_image_folder_csv(rows, tmp_path)
    with (tmp_path / "train.csv").open(newline="") as handle:
        [record] = list(csv.DictReader(handle, delimiter="\t"))
    assert record["title"] == 'A "quoted" caption, with comma'
    assert np.asarray(Image.open(record["filepath"])).shape == (SIZE, SIZE, 3)


def test_a_killed_export_leaves_nothing_the_next_export_keeps(tmp_path):
    # A real process killed with SIGKILL inside ``replacing`` runs no clean-up of its own.
    target = tmp_path / "exports" / "pathgen_json"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pathgen_dagster.lib.dataset.exports import replacing\n"
        "with replacing(Path(sys.argv[1])) as staging:\n"
        "    (staging / 'part.json').write_text('[')\n"
        "    print('staged', flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staged"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    [abandoned] = [p for p in target.parent.iterdir() if ".staging-" in p.name]
    assert (abandoned / "part.json").exists()
    with replacing(target) as staging:
        (staging / "pairs.json").write_text("[]")
    assert sorted(p.name for p in target.parent.iterdir()) == ["pathgen_json"]
    assert [p.name for p in target.iterdir()] == ["pairs.json"]
