"""Disk-full and read-only writes (issue 16): a real 4 MB tmpfs and a real read-only remount.

Mounting needs root (CAP_SYS_ADMIN); without it these tests skip and say so. Before the
fix the error was raw delta-rs text ("Failed to parse parquet: ... No space left on device
(os error 28)") and a failed write left an unreferenced parquet file in the slide's folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pathgen_dagster.lib import delta
from tests.lib.test_delta import SPEC, read, rows


@pytest.fixture()
def small_fs(tmp_path: Path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def big_rows(slide_id: str, n: int) -> pl.DataFrame:
    noise = np.random.default_rng(0).random(n)  # incompressible, so it fills the disk
    return rows(slide_id, n).with_columns(pl.Series("score", noise), pl.Series("label", noise.astype(str)))


def fill(mount: Path) -> None:
    with open(mount / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_disk_full_names_table_slide_path_and_fix_and_leaves_no_partial_file(small_fs: Path):
    uri = str(small_fs / "measures")
    delta.write_partition(uri, SPEC, "A", rows("A", 10))
    version = delta.table_version(uri)
    fill(small_fs)
    filler = small_fs / "filler"
    os.truncate(filler, filler.stat().st_size - 200_000)  # room for part of a data file
    with pytest.raises(delta.StorageError) as raised:
        delta.write_partition(uri, SPEC, "B", big_rows("B", 200_000))
    message = str(raised.value)
    assert "table 'measures' (slide B): the disk is full at" in message and uri in message
    assert "Fix: free space on it" in message and "nothing was committed" in message
    assert not list((small_fs / "measures" / "slide_id=B").glob("*.parquet"))  # cleaned up
    assert delta.table_version(uri) == version
    (small_fs / "filler").unlink()
    delta.write_partition(uri, SPEC, "B", rows("B", 5))  # with space again, it just works
    assert read(uri)["slide_id"].to_list() == ["A"] * 10 + ["B"] * 5


def test_disk_full_at_commit_removes_the_data_file_no_version_references(small_fs: Path):
    # One free page: the data file fits, the commit's log entry does not (delta-rs then
    # says only "Generic LocalFileSystem error" and left the parquet file behind).
    uri = str(small_fs / "measures")
    delta.write_partition(uri, SPEC, "A", rows("A", 10))
    fill(small_fs)
    filler = small_fs / "filler"
    os.truncate(filler, filler.stat().st_size - 4096)
    with pytest.raises(delta.StorageError) as raised:
        delta.write_partition(uri, SPEC, "B", rows("B", 5))
    assert "the disk is full" in str(raised.value)
    assert not list((small_fs / "measures" / "slide_id=B").glob("*.parquet"))
    assert read(uri)["slide_id"].to_list() == ["A"] * 10


def test_read_only_file_system_names_the_fix(small_fs: Path):
    uri = str(small_fs / "measures")
    delta.write_partition(uri, SPEC, "A", rows("A", 10))
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(delta.StorageError) as raised:
            delta.write_partition(uri, SPEC, "B", rows("B", 5))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    message = str(raised.value)
    assert "table 'measures' (slide B): the file system is read-only" in message
    assert "Fix: remount it read-write" in message
    assert read(uri)["slide_id"].to_list() == ["A"] * 10
