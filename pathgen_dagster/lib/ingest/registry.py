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


# Vendors a lab may have that OpenSlide 4.0 does not read: rejected with the fix.
UNSUPPORTED_FORMATS = {
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
    ".vsi": "Olympus VSI",
    ".lif": "Leica LIF",
}
LINK_ROOTS_ENV = "PATHGEN_ALLOWED_LINK_ROOTS"


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def walk_landing(
    landing: Path, *, allowed_roots: tuple[Path, ...] = ()
) -> tuple[list[LandingFile], list[RejectedFile]]:
    """Slide files under ``landing`` with their ids, and the slide-named files skipped.

    Symlink policy: a link is followed only when its target resolves inside the landing
    zone or one of ``allowed_roots`` (``PATHGEN_ALLOWED_LINK_ROOTS``, ``:``-separated);
    a link elsewhere, a dangling link and a vendor format OpenSlide does not read are
    skipped, each with a reason, so the caller records every one in ``slide_errors``.
    """
    landing = landing.resolve()
    roots = (landing, *(Path(root).resolve() for root in allowed_roots))
    paths, skipped = [], []
    for path in sorted(landing.rglob("*")):
        suffix = path.suffix.lower()
        if path.name.endswith(".part") or path.is_dir():
            continue
        relative = str(path.relative_to(landing))
        if suffix in UNSUPPORTED_FORMATS:
            skipped.append(
                (
                    path,
                    f"{path}: {UNSUPPORTED_FORMATS[suffix]} is a vendor format OpenSlide does "
                    "not read; convert it to a tiled pyramidal OME-TIFF (e.g. with bfconvert "
                    "or QuPath) and drop that into the landing zone",
                )
            )
            continue
        if suffix not in SLIDE_SUFFIXES:
            continue
        if path.is_symlink():
            target = path.resolve()
            if not target.exists():
                skipped.append((path, f"{path}: dangling symlink to {target}; restore the target"))
                continue
            if not _inside(target, roots):
                skipped.append(
                    (
                        path,
                        f"{path}: symlink to {target}, outside the landing zone and the "
                        f"allowed roots; add its folder to {LINK_ROOTS_ENV} or copy the file in",
                    )
                )
                continue
        if path.is_file():
            paths.append((path, relative))
    stems = Counter(path.stem for path, _ in paths + [(p, "") for p, _ in skipped])
    sites = read_manifest(landing)

    def slide_id(path: Path) -> str:
        relative = str(path.relative_to(landing))
        return sanitise_slide_id(path.stem, relative, collides=stems[path.stem] > 1)

    files = [
        LandingFile(slide_id(path), path, sites.get(Path(relative).as_posix())) for path, relative in paths
    ]
    rejected = [RejectedFile(slide_id(path), path, reason) for path, reason in skipped]
    return files, rejected


def landing_files(landing: Path, *, allowed_roots: tuple[Path, ...] = ()) -> list[LandingFile]:
    """Every slide file under ``landing`` (symlink policy applied) with its id and site."""
    return walk_landing(landing, allowed_roots=allowed_roots)[0]


def read_manifest(landing: Path) -> dict[str, str]:
    """Relative path -> tissue site from the optional ``manifest.csv`` of the landing zone.

    ``file_name`` is the file's path relative to the landing zone (``a.svs`` at the top,
    ``lab2/a.svs`` in a subfolder), so a file in a subfolder never takes the site of a
    top-level file with the same name.
    """
    manifest = landing / "manifest.csv"
    if not manifest.exists():
        return {}
    with open(manifest, newline="") as handle:
        return {
            Path(row["file_name"].strip()).as_posix(): row["tissue_site"]
            for row in csv.DictReader(handle)
            if row.get("tissue_site") and row.get("file_name")
        }


def scan(
    landing: Path, *, allowed_roots: tuple[Path, ...] = ()
) -> tuple[list[LandingFile], list[RejectedFile]]:
    """Readable slides and rejected files of the landing zone; one bad file never stops others."""
    if not landing.is_dir():
        raise FileNotFoundError(f"landing zone {landing} does not exist; run `pathgen samples {landing}`")
    files, rejected = walk_landing(landing, allowed_roots=allowed_roots)
    readable = []
    for landing_file in files:
        try:
            inspect(landing_file.path)
        except SlideReadError as error:
            rejected.append(RejectedFile(landing_file.slide_id, landing_file.path, str(error)))
        else:
            readable.append(landing_file)
    return readable, rejected


def duplicate_reason(path: Path, original_id: str, original_uri: str, sha256: str) -> str:
    """The slide_errors reason of a file whose bytes are already registered."""
    return (
        f"{path}: duplicate of slide {original_id!r} ({original_uri}), same sha256 "
        f"{sha256[:16]}...; not processed twice: its tiles and pairs come from "
        f"{original_id!r}. Delete the copy, or ignore this row"
    )


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
        record_slide_error(lakehouse, item.slide_id, item.path, stage="registry", reason=item.reason)
