"""The landing zone: which files are slides, their stable ids, and which cannot be read."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import polars as pl

from pathgen_dagster.lib.ingest.wsi import SLIDE_SUFFIXES, SlideReadError, inspect
from pathgen_dagster.lib.schemas import SLIDE_ERRORS

MAX_ID_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LandingFile:
    """A slide-suffixed file in the landing zone and the id it is registered under."""

    slide_id: str
    path: Path
    tissue_site: str | None


@dataclass(frozen=True)
class RejectedFile:
    """A landing file OpenSlide cannot read, with the reason."""

    slide_id: str
    path: Path
    reason: str


def sanitise_slide_id(stem: str, relative_path: str, *, collides: bool = False) -> str:
    """A Dagster-safe partition key for a slide file: ``[A-Za-z0-9._-]``, at most 64 chars.

    A clean, unique stem is its own id (``CMU-1-Small-Region``). When the stem had to be
    changed (spaces, commas, ``#``, ``;`` ...), was too long, or collides with another file's
    stem, 8 hex of the sha1 of the file's path relative to the landing zone are appended, so
    ids stay stable across scans and never collide.
    """
    clean = _UNSAFE.sub("_", stem).strip("._-") or "slide"
    if clean == stem and len(clean) <= MAX_ID_LENGTH and not collides:
        return clean
    digest = hashlib.sha1(relative_path.encode()).hexdigest()[:8]
    return f"{clean[: MAX_ID_LENGTH - 9]}-{digest}"


def landing_files(landing: Path) -> list[LandingFile]:
    """Every slide-suffixed file under ``landing``, with its id and manifest tissue site."""
    paths = sorted(
        path
        for path in landing.rglob("*")
        if path.is_file()
        and path.suffix.lower() in SLIDE_SUFFIXES
        and not path.name.endswith(".part")
    )
    stems = Counter(path.stem for path in paths)
    sites = read_manifest(landing)
    return [
        LandingFile(
            slide_id=sanitise_slide_id(
                path.stem, str(path.relative_to(landing)), collides=stems[path.stem] > 1
            ),
            path=path,
            tissue_site=sites.get(path.name),
        )
        for path in paths
    ]


def read_manifest(landing: Path) -> dict[str, str]:
    """File name -> tissue site from the optional ``manifest.csv`` of the landing zone."""
    manifest = landing / "manifest.csv"
    if not manifest.exists():
        return {}
    with open(manifest, newline="") as handle:
        return {
            row["file_name"]: row["tissue_site"]
            for row in csv.DictReader(handle)
            if row.get("tissue_site")
        }


def scan(landing: Path) -> tuple[list[LandingFile], list[RejectedFile]]:
    """Readable slides and rejected files of the landing zone; one bad file never stops others."""
    if not landing.is_dir():
        raise FileNotFoundError(
            f"landing zone {landing} does not exist; run `pathgen samples {landing}`"
        )
    readable, rejected = [], []
    for landing_file in landing_files(landing):
        try:
            inspect(landing_file.path)
        except SlideReadError as error:
            rejected.append(RejectedFile(landing_file.slide_id, landing_file.path, str(error)))
        else:
            readable.append(landing_file)
    return readable, rejected


class SlideTableWriter(Protocol):
    """What replaces one slide's rows of a table and returns the version (the lakehouse)."""

    def write_slide(self, table: str, slide_id: str, rows: pl.DataFrame) -> int: ...


def record_slide_error(
    lakehouse: SlideTableWriter, slide_id: str, path: Path, *, stage: str, reason: str
) -> int:
    """Write (or replace) the slide's row in ``slide_errors``; returns the table version."""
    row = {
        "slide_id": slide_id,
        "uri": str(path.resolve()),
        "file_size": path.stat().st_size if path.exists() else 0,
        "stage": stage,
        "reason": reason,
        "detected_at": datetime.now(UTC),
    }
    return lakehouse.write_slide(SLIDE_ERRORS.name, slide_id, pl.DataFrame([row]))


def record_rejections(lakehouse: SlideTableWriter, rejected: list[RejectedFile]) -> None:
    """Write each rejected file to ``slide_errors`` (stage ``registry``)."""
    for item in rejected:
        record_slide_error(
            lakehouse, item.slide_id, item.path, stage="registry", reason=item.reason
        )
