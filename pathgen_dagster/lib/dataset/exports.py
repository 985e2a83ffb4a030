"""Training exports of ``training_pairs``: the files training code reads, and their manifest.

Three formats, each written into its own folder with a ``manifest.json`` (counts, sha256 of
every file, source table versions):

- ``pathgen_json``: ``pathgen.json``, a JSON array in the PathGen-1.6M public release shape
  ``{"wsi_id", "position": ["x", "y"], "caption", "file_id"}``. ``wsi_id`` is the slide's
  file name without its extension (PathGen used the TCGA file name); ``file_id`` is the
  slide file's sha256, because local slides have no GDC file UUID and the sha256 identifies
  the exact bytes.
- ``image_folder_csv``: ``images/<slide_id>/<pair_id>.jpg`` plus ``train.csv``, tab
  separated with columns ``filepath`` (absolute) and ``title``: open_clip's CSV loader
  defaults (``--csv-separator '\\t' --csv-img-key filepath --csv-caption-key title``), so
  ``--train-data .../train.csv --dataset-type csv`` needs no other flag. Images are listed
  with their sha256 in ``images.sha256`` (``sha256sum -c`` format) rather than in the
  manifest, which stays small at 1.6M images.
- ``webdataset``: ``pathgen-000000.tar`` ... shards with ``<key>.jpg``, ``<key>.txt``
  (caption) and ``<key>.json`` (pair metadata) per sample, and ``sizes.json`` (samples per
  shard), which open_clip reads for the dataset size. Keys are 9-digit ordinals because
  WebDataset splits a member name at its first dot and pair ids may contain dots.

Images are the JPEG bytes of ``patches.image_jpeg`` written verbatim (never re-read from the
slide, never re-encoded); each is checked against the pair's ``image_sha256`` first.
Outputs are deterministic: rows in pair id order, tar members with fixed metadata, so the
same table versions give the same sha256 sums.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SAMPLES_PER_SHARD = 1000
# Metadata that travels with each WebDataset sample (the rest stays in training_pairs).
SAMPLE_FIELDS = (
    "pair_id",
    "slide_id",
    "x",
    "y",
    "level",
    "size_px",
    "mpp",
    "tissue_site",
    "image_sha256",
    "clip_tokens",
    "quality_score",
    "ruleset_version",
    "slide_sha256",
    "summary_model_id",
)
PAIR_COLUMNS = (
    "pair_id",
    "slide_id",
    "patch_id",
    "x",
    "y",
    "level",
    "size_px",
    "mpp",
    "tissue_site",
    "image_sha256",
    "caption",
    "clip_tokens",
    "quality_score",
    "ruleset_version",
    "slide_file_name",
    "slide_sha256",
    "summary_model_id",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ExportError(RuntimeError):
    """A pair cannot be exported as it is (missing or changed image); nothing was replaced."""


@dataclass(frozen=True)
class ExportedFile:
    """One file of an export: path relative to the export folder, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass
class ExportSummary:
    """What an export wrote: pairs, slides, files, and format-specific counts."""

    name: str
    pairs: int = 0
    slides: int = 0
    files: list[ExportedFile] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(directory: Path, path: Path) -> ExportedFile:
    return ExportedFile(
        path.relative_to(directory).as_posix(), path.stat().st_size, sha256_file(path)
    )


# -- reading pairs -----------------------------------------------------------------------


def iter_pairs(
    connection: duckdb.DuckDBPyConnection,
    training_pairs: str,
    *,
    patches: str | None = None,
    batch_rows: int = 2048,
) -> Iterator[dict[str, Any]]:
    """The pairs of ``training_pairs`` in pair id order, with ``image_jpeg`` when ``patches``.

    Args:
        connection: DuckDB connection with the delta extension loaded.
        training_pairs: SQL relation of the pairs, e.g. ``delta_scan('...', version => 3)``.
        patches: SQL relation of the patches; given, images are joined one slide at a time
            (partition-pruned, so memory holds one slide's images, not the dataset's).
        batch_rows: rows fetched per Arrow batch.
    """
    columns = ", ".join(f"t.{name}" for name in PAIR_COLUMNS)
    if patches is None:
        yield from _fetch(
            connection,
            f"SELECT {columns} FROM {training_pairs} AS t ORDER BY t.pair_id",
            batch_rows,
        )
        return
    slide_ids = [
        row[0]
        for row in connection.sql(
            f"SELECT DISTINCT slide_id FROM {training_pairs} ORDER BY slide_id"
        ).fetchall()
    ]
    for slide_id in slide_ids:
        literal = "'" + slide_id.replace("'", "''") + "'"
        query = (
            f"SELECT {columns}, p.image_jpeg FROM {training_pairs} AS t "
            f"LEFT JOIN (SELECT slide_id, patch_id, image_jpeg FROM {patches} "
            f"WHERE slide_id = {literal}) AS p USING (slide_id, patch_id) "
            f"WHERE t.slide_id = {literal} ORDER BY t.pair_id"
        )
        yield from _fetch(connection, query, batch_rows)


def _fetch(
    connection: duckdb.DuckDBPyConnection, query: str, batch_rows: int
) -> Iterator[dict[str, Any]]:
    reader = connection.sql(query).to_arrow_reader(batch_rows)
    for batch in reader:
        yield from batch.to_pylist()


def checked_image(row: Mapping[str, Any]) -> bytes:
    """The pair's JPEG bytes, after checking they are the bytes the pair was built from."""
    image = row.get("image_jpeg")
    if image is None:
        raise ExportError(
            f"pair {row['pair_id']!r} (slide {row['slide_id']!r}): no image in `patches`; "
            f"the patch was re-selected after training_pairs was built: re-materialize "
            f"training_pairs for slide {row['slide_id']!r}, then export again"
        )
    if sha256_bytes(image) != row["image_sha256"]:
        raise ExportError(
            f"pair {row['pair_id']!r} (slide {row['slide_id']!r}): the image in `patches` "
            "differs from the one training_pairs recorded (image_sha256); re-materialize "
            f"training_pairs for slide {row['slide_id']!r}, then export again"
        )
    return image


# -- writers -----------------------------------------------------------------------------


def pathgen_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One pair in the PathGen-1.6M public JSON shape."""
    return {
        "wsi_id": Path(row["slide_file_name"]).stem,
        "position": [str(row["x"]), str(row["y"])],
        "caption": row["caption"],
        "file_id": row["slide_sha256"],
    }


def write_pathgen_json(rows: Iterable[Mapping[str, Any]], directory: Path) -> ExportSummary:
    """``pathgen.json``: every pair as a PathGen-1.6M record, one JSON array."""
    summary = ExportSummary("pathgen_json")
    slides: set[str] = set()
    path = directory / "pathgen.json"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for row in rows:
            handle.write(",\n" if summary.pairs else "\n")
            handle.write(json.dumps(pathgen_record(row), ensure_ascii=False))
            summary.pairs += 1
            slides.add(row["slide_id"])
        handle.write("\n]\n")
    summary.slides = len(slides)
    summary.files.append(describe_file(directory, path))
    return summary


def image_path(directory: Path, row: Mapping[str, Any]) -> Path:
    """Where the image folder export keeps a pair's JPEG."""
    return (
        directory
        / "images"
        / _UNSAFE.sub("_", row["slide_id"])
        / (_UNSAFE.sub("_", row["pair_id"]) + ".jpg")
    )


def write_image_folder_csv(
    rows: Iterable[Mapping[str, Any]], directory: Path, *, final_directory: Path | str | None = None
) -> ExportSummary:
    """``images/`` + ``train.csv`` (filepath, title; tab separated) for open_clip's CSV loader.

    ``filepath`` is absolute: open_clip opens the path as given, from whatever folder
    training runs in. It points into ``final_directory`` (where the export will live once
    :func:`replacing` swaps it in; ``directory`` by default). After moving the folder,
    rewrite the prefix or export again. A string ``final_directory`` (an object-store URL
    such as ``s3://bucket/lake/exports/image_folder_csv``) is used as given.
    """
    final = (
        final_directory.rstrip("/")
        if isinstance(final_directory, str)
        else str((final_directory or directory).resolve())
    )
    summary = ExportSummary("image_folder_csv")
    slides: set[str] = set()
    table = directory / "train.csv"
    checksums = directory / "images.sha256"
    with (
        table.open("w", encoding="utf-8", newline="") as table_handle,
        checksums.open("w", encoding="utf-8") as checksum_handle,
    ):
        writer = csv.writer(table_handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title", "pair_id"])
        for row in rows:
            image = checked_image(row)
            path = image_path(directory, row)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image)
            relative = path.relative_to(directory).as_posix()
            writer.writerow([f"{final}/{relative}", row["caption"], row["pair_id"]])
            checksum_handle.write(f"{row['image_sha256']}  {relative}\n")
            summary.pairs += 1
            slides.add(row["slide_id"])
    summary.slides = len(slides)
    summary.counts["images"] = summary.pairs
    summary.files += [describe_file(directory, table), describe_file(directory, checksums)]
    return summary


def write_webdataset(
    rows: Iterable[Mapping[str, Any]],
    directory: Path,
    *,
    samples_per_shard: int = SAMPLES_PER_SHARD,
    prefix: str = "pathgen",
) -> ExportSummary:
    """WebDataset tar shards (jpg, txt, json per sample) and ``sizes.json``."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    summary = ExportSummary("webdataset")
    slides: set[str] = set()
    sizes: dict[str, int] = {}
    iterator = iter(rows)
    for first in iterator:
        shard_path = directory / f"{prefix}-{len(sizes):06d}.tar"
        sizes[shard_path.name] = 0
        with tarfile.open(shard_path, "w", format=tarfile.USTAR_FORMAT) as shard:
            for row in itertools.chain([first], itertools.islice(iterator, samples_per_shard - 1)):
                image = checked_image(row)
                key = f"{summary.pairs:09d}"
                metadata = {name: row.get(name) for name in SAMPLE_FIELDS}
                _add_member(shard, f"{key}.jpg", image)
                _add_member(shard, f"{key}.txt", row["caption"].encode("utf-8"))
                _add_member(
                    shard,
                    f"{key}.json",
                    json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                )
                sizes[shard_path.name] += 1
                summary.pairs += 1
                slides.add(row["slide_id"])
    sizes_path = directory / "sizes.json"
    sizes_path.write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    summary.slides = len(slides)
    summary.counts["shards"] = len(sizes)
    summary.files += [describe_file(directory, directory / name) for name in sorted(sizes)]
    summary.files.append(describe_file(directory, sizes_path))
    return summary


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed owner, mode and time: the same pairs give byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    archive.addfile(info, io.BytesIO(data))


# -- manifest and atomic replacement --------------------------------------------------------


def write_manifest(
    directory: Path,
    summary: ExportSummary,
    *,
    source_versions: Mapping[str, int],
    run_id: str,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` for an export; return what was written."""
    manifest = {
        "export": summary.name,
        "format_version": FORMAT_VERSION,
        "pairs": summary.pairs,
        "slides": summary.slides,
        "counts": dict(summary.counts),
        "files": [asdict(f) for f in summary.files],
        "source_versions": dict(source_versions),
        "config": dict(config or {}),
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def replacing(directory: Path) -> Iterator[Path]:
    """A fresh staging folder that replaces ``directory`` only when the block succeeds.

    A failed export leaves the previous one untouched; readers never see half a new one
    (the swap is two renames on one filesystem). Staging and retired folders are named after
    the writing process, so folders left by a process that was killed (SIGKILL runs no
    clean-up) are removed by the next export of the same name.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(directory)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = directory.with_name(f".{directory.name}.staging-{token}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = directory.with_name(f".{directory.name}.retired-{token}")
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)


def remove_abandoned(directory: Path) -> list[Path]:
    """Removes the staging/retired folders of ``directory`` whose writing process is gone."""
    pattern = re.compile(rf"^\.{re.escape(directory.name)}\.(staging|retired)-(\d+)-[0-9a-f]+$")
    removed = []
    for path in directory.parent.iterdir():
        match = pattern.match(path.name)
        if match and not _process_alive(int(match[2])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the export in ``directory``."""
    return json.loads((directory / MANIFEST).read_text())


def verify(directory: Path) -> list[str]:
    """Files whose size or sha256 differ from the manifest (empty when the export is intact)."""
    problems = []
    for entry in read_manifest(directory)["files"]:
        path = directory / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: changed since export")
    return problems


# -- PathGen-Instruct in LLaVA's training format ---------------------------------------------

LLAVA_JSON = "pathgen_instruct.json"
LLAVA_TYPES = {"conversation": "OPEN", "multiple_choice": "CLOSE"}
INSTRUCTION_COLUMNS = (
    "instruction_id",
    "slide_id",
    "pair_id",
    "patch_id",
    "kind",
    "turns_json",
    "image_sha256",
)


def iter_instructions(
    connection: duckdb.DuckDBPyConnection,
    instructions: str,
    training_pairs: str,
    patches: str,
    *,
    max_quarantine_share: float,
    batch_rows: int = 2048,
) -> Iterator[dict[str, Any]]:
    """Exportable instructions in id order, each with its pair's position and image bytes.

    Exportable: ``status = 'ok'``, the pair still in ``training_pairs``, and the slide not
    blocked (at most ``max_quarantine_share`` of its rows quarantined, the gate's rule).
    Images are joined one slide at a time, as :func:`iter_pairs` does.
    """
    columns = ", ".join(f"i.{name}" for name in INSTRUCTION_COLUMNS)
    slide_ids = exportable_slides(connection, instructions, max_quarantine_share=max_quarantine_share)
    for slide_id in slide_ids:
        literal = "'" + slide_id.replace("'", "''") + "'"
        query = (
            f"SELECT {columns}, t.x, t.y, t.slide_file_name, t.slide_sha256, p.image_jpeg "
            f"FROM {instructions} AS i "
            f"JOIN (SELECT * FROM {training_pairs} WHERE slide_id = {literal}) AS t "
            f"USING (slide_id, pair_id) "
            f"LEFT JOIN (SELECT slide_id, patch_id, image_jpeg FROM {patches} "
            f"WHERE slide_id = {literal}) AS p ON p.slide_id = i.slide_id AND p.patch_id = i.patch_id "
            f"WHERE i.slide_id = {literal} AND i.status = 'ok' ORDER BY i.instruction_id"
        )
        yield from _fetch(connection, query, batch_rows)


def exportable_slides(
    connection: duckdb.DuckDBPyConnection, instructions: str, *, max_quarantine_share: float
) -> list[str]:
    """Slides whose quarantined share is within ``max_quarantine_share`` (not blocked)."""
    return [
        row[0]
        for row in connection.sql(
            f"SELECT slide_id FROM {instructions} GROUP BY slide_id "
            f"HAVING avg(CASE WHEN status = 'quarantined' THEN 1.0 ELSE 0.0 END) "
            f"<= {float(max_quarantine_share)} ORDER BY slide_id"
        ).fetchall()
    ]


def count_exportable(
    connection: duckdb.DuckDBPyConnection,
    instructions: str,
    training_pairs: str,
    *,
    max_quarantine_share: float,
) -> int:
    """How many records :func:`iter_instructions` yields (the export's expected count)."""
    slides = exportable_slides(connection, instructions, max_quarantine_share=max_quarantine_share)
    if not slides:
        return 0
    listed = ", ".join("'" + s.replace("'", "''") + "'" for s in slides)
    query = (
        f"SELECT count(*) FROM {instructions} AS i JOIN {training_pairs} AS t "
        f"USING (slide_id, pair_id) WHERE i.status = 'ok' AND i.slide_id IN ({listed})"
    )
    return connection.sql(query).fetchone()[0]


def llava_record(row: Mapping[str, Any], image: str) -> dict[str, Any]:
    """One instruction as a LLaVA training record (plus PathGen-Instruct's extra keys)."""
    return {
        "id": row["instruction_id"],
        "image": image,
        "conversations": json.loads(row["turns_json"]),
        "type": LLAVA_TYPES[row["kind"]],
        "wsi_id": Path(row["slide_file_name"]).stem,
        "file_id": row["slide_sha256"],
        "position": [str(row["x"]), str(row["y"])],
    }


def write_llava_json(rows: Iterable[Mapping[str, Any]], directory: Path) -> ExportSummary:
    """``pathgen_instruct.json`` (a JSON list in LLaVA's format) and ``images/`` beside it.

    ``image`` paths are relative to the export folder (LLaVA's ``--image_folder``); each
    pair's JPEG is written once, verbatim from ``patches``, after its sha256 is checked.
    ``summary.pairs`` counts instructions (records), ``counts`` splits them by kind.
    """
    summary = ExportSummary("llava_instruct")
    slides: set[str] = set()
    written: set[str] = set()
    counts = {"conversation": 0, "multiple_choice": 0}
    path = directory / LLAVA_JSON
    checksums = directory / "images.sha256"
    with path.open("w", encoding="utf-8") as handle, checksums.open("w", encoding="utf-8") as sums:
        handle.write("[")
        for row in rows:
            image_file = image_path(directory, row)
            relative = image_file.relative_to(directory).as_posix()
            if relative not in written:
                image = checked_image(row)
                image_file.parent.mkdir(parents=True, exist_ok=True)
                image_file.write_bytes(image)
                sums.write(f"{row['image_sha256']}  {relative}\n")
                written.add(relative)
            handle.write(",\n" if summary.pairs else "\n")
            handle.write(json.dumps(llava_record(row, relative), ensure_ascii=False))
            summary.pairs += 1
            counts[row["kind"]] += 1
            slides.add(row["slide_id"])
        handle.write("\n]\n")
    summary.slides = len(slides)
    summary.counts = {**counts, "images": len(written)}
    summary.files += [describe_file(directory, path), describe_file(directory, checksums)]
    return summary
