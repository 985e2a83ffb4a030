"""Shared fixtures: the real sample landing zone, a fresh lakehouse, a Dagster instance."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import tifffile

from pathgen_dagster.lib.ingest.samples import build_landing_zone, write_single_level_slide  # noqa: F401
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's landing zone (built once per test session; never modified by tests)."""
    landing = tmp_path_factory.mktemp("sample_landing")
    build_landing_zone(landing)
    return landing


@pytest.fixture
def landing(sample_landing: Path, tmp_path: Path) -> Path:
    """A private copy of the sample landing zone that a test may add files to."""
    copy = tmp_path / "landing"
    shutil.copytree(sample_landing, copy)
    return copy


@pytest.fixture
def cmu_slide(sample_landing: Path) -> Path:
    return sample_landing / "CMU-1-Small-Region.svs"


@pytest.fixture
def lakehouse(tmp_path: Path) -> Lakehouse:
    return Lakehouse(root=str(tmp_path / "lakehouse"))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def resources(lakehouse: Lakehouse, landing: Path) -> dict:
    return {"lakehouse": lakehouse, "slide_store": SlideStore(landing=str(landing))}


def write_blank_slide(path: Path, *, width: int = 4096, height: int = 3072, mpp: float = 0.5) -> Path:
    """An all-glass pyramidal Aperio-style slide: readable, with no tissue at all."""
    description = f"Aperio Image Library v12.0.16\r\n{width}x{height}|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for downsample in (1, 4, 16):
            shape = (height // downsample, width // downsample, 3)
            tiff.write(
                np.full(shape, 244, dtype=np.uint8),
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                description=description,
                metadata=None,
                subfiletype=0 if downsample == 1 else 1,
            )
    return path
