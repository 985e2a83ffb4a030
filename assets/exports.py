"""Exports of ``training_pairs`` that training code reads, each with a manifest.

Unpartitioned assets over the per-slide ``training_pairs`` (and ``patches`` for the JPEG
bytes): they depend through ``deps`` and read Delta pinned to one version each, recorded in
the manifest. Files land in ``<lakehouse root>/exports/<name>/``; a new export replaces the
old one only once it is complete.
"""

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from assets.coverage import coverage_spec, slide_coverage
from pathgen_dagster.lib.dataset.exports import (
    MANIFEST,
    SAMPLES_PER_SHARD,
    ExportError,
    ExportSummary,
    count_exportable,
    iter_instructions,
    iter_pairs,
    replacing,
    write_image_folder_csv,
    write_llava_json,
    write_manifest,
    write_pathgen_json,
    write_webdataset,
)
from pathgen_dagster.lib.dataset.sql_models import quote
from pathgen_dagster.lib.instructions.generate import InstructionConfig
from pathgen_dagster.lib.schemas import DATASET_DUPLICATES, INSTRUCTIONS, PATCHES, TRAINING_PAIRS
from pathgen_dagster.resources.lakehouse import Lakehouse

GROUP = "exports"
EXPORTS_FOLDER = "exports"

Writer = Callable[[Iterable[Mapping[str, Any]], Path], ExportSummary]


def export_directory(lakehouse: Lakehouse, name: str) -> str:
    """``<lakehouse root>/exports/<name>`` (a path, or a URL on an object store)."""
    return lakehouse.location(f"{EXPORTS_FOLDER}/{name}")


def export_staging(lakehouse: Lakehouse, name: str) -> contextlib.AbstractContextManager[Path]:
    """A local folder that becomes export ``name`` only when the block succeeds: a staging
    folder swapped in by rename (local), or uploaded then stale objects removed (object
    store)."""
    if lakehouse.is_object_store:
        return lakehouse.folder(f"{EXPORTS_FOLDER}/{name}")
    return replacing(Path(export_directory(lakehouse, name)))


def pinned_versions(lakehouse: Lakehouse, name: str, tables: list[str]) -> dict[str, int]:
    """The current version of each source table of export ``name``, pinned for the export.

    Raises:
        ExportError: a source table has never been written.
    """
    versions = {}
    for table in tables:
        version = lakehouse.version(table)
        if version is None:
            raise ExportError(f"export {name}: table {table!r} has never been written")
        versions[table] = version
    return versions


def source_relations(lakehouse: Lakehouse, versions: dict[str, int]) -> dict[str, str]:
    """SQL relation of each pinned source table; ``training_pairs`` without the pairs the
    whole-dataset step removed as near-duplicate images of a lower pair id."""
    relation = {
        table: f"delta_scan({quote(lakehouse.uri(table))}, version => {version})"
        for table, version in versions.items()
    }
    removed = relation.pop(DATASET_DUPLICATES.name)
    relation[TRAINING_PAIRS.name] = (
        f"(SELECT * FROM {relation[TRAINING_PAIRS.name]} WHERE pair_id NOT IN "
        f"(SELECT pair_id FROM {removed} WHERE action = 'removed'))"
    )
    return relation


def run_export(
    lakehouse: Lakehouse,
    name: str,
    writer: Writer,
    *,
    with_images: bool,
    run_id: str,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write export ``name`` from the current ``training_pairs``; return its manifest.

    Raises:
        ExportError: a source table is missing, a pair has no (or a changed) image, or the
            export's pair count differs from the table's.
    """
    versions = pinned_versions(
        lakehouse,
        name,
        [TRAINING_PAIRS.name, DATASET_DUPLICATES.name, *([PATCHES.name] if with_images else [])],
    )
    relation = source_relations(lakehouse, versions)
    with lakehouse.connect(views=False) as connection, export_staging(lakehouse, name) as staging:
        expected = connection.sql(f"SELECT count(*) FROM {relation[TRAINING_PAIRS.name]}")
        expected_pairs = expected.fetchone()[0]
        rows = iter_pairs(
            connection, relation[TRAINING_PAIRS.name], patches=relation.get(PATCHES.name)
        )
        summary = writer(rows, staging)
        if summary.pairs != expected_pairs:
            raise ExportError(
                f"export {name}: wrote {summary.pairs} pairs but training_pairs "
                f"v{versions[TRAINING_PAIRS.name]} holds {expected_pairs}"
            )
        manifest = write_manifest(
            staging, summary, source_versions=versions, run_id=run_id, config=config
        )
    return manifest


def _result(
    context: dg.AssetExecutionContext, lakehouse: Lakehouse, name: str, manifest: dict, seconds: float
) -> dg.MaterializeResult:
    directory = export_directory(lakehouse, name)
    size = sum(entry["bytes"] for entry in manifest["files"])
    coverage, check = slide_coverage(context.instance, context.asset_key.to_user_string())
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            **coverage,
            "pairs": manifest["pairs"],
            "slides": manifest["slides"],
            **{key: value for key, value in manifest["counts"].items()},
            **{f"{table}_version": v for table, v in manifest["source_versions"].items()},
            "files": len(manifest["files"]),
            "listed_bytes": size,
            "seconds": round(seconds, 2),
            "directory": dg.MetadataValue.path(directory),
            "manifest": dg.MetadataValue.path(f"{directory}/{MANIFEST}"),
        }
    )


def _export_asset(name: str, doc: str, *, with_images: bool, kinds: set[str]):
    deps = [TRAINING_PAIRS.name, DATASET_DUPLICATES.name, *([PATCHES.name] if with_images else [])]
    return dg.asset(
        name=f"{name}_export",
        deps=deps,
        check_specs=[coverage_spec(f"{name}_export")],
        group_name=GROUP,
        kinds=kinds,
        description=doc,
    )


@_export_asset(
    "pathgen_json",
    "training_pairs in the PathGen-1.6M public JSON shape (wsi_id, position, caption, "
    "file_id = slide sha256), for users of the original release.",
    with_images=False,
    kinds={"json"},
)
def pathgen_json_export(
    context: dg.AssetExecutionContext, lakehouse: Lakehouse
) -> dg.MaterializeResult:
    started = time.perf_counter()
    manifest = _guarded(
        lambda: run_export(
            lakehouse, "pathgen_json", write_pathgen_json, with_images=False, run_id=context.run_id
        )
    )
    return _result(context, lakehouse, "pathgen_json", manifest, time.perf_counter() - started)


@_export_asset(
    "image_folder_csv",
    "Patch JPEGs in a folder and a tab-separated train.csv (filepath, title): open_clip's "
    "CSV training loader with its default keys.",
    with_images=True,
    kinds={"csv", "jpeg"},
)
def image_folder_csv_export(
    context: dg.AssetExecutionContext, lakehouse: Lakehouse
) -> dg.MaterializeResult:
    started = time.perf_counter()
    final = export_directory(lakehouse, "image_folder_csv")
    manifest = _guarded(
        lambda: run_export(
            lakehouse,
            "image_folder_csv",
            lambda rows, staging: write_image_folder_csv(rows, staging, final_directory=final),
            with_images=True,
            run_id=context.run_id,
        )
    )
    return _result(context, lakehouse, "image_folder_csv", manifest, time.perf_counter() - started)


class WebDatasetConfig(dg.Config):
    """Shard size of the WebDataset export."""

    samples_per_shard: int = SAMPLES_PER_SHARD


@_export_asset(
    "webdataset",
    "WebDataset tar shards (jpg, txt, json per sample) with sizes.json, for streaming "
    "training (open_clip --dataset-type webdataset).",
    with_images=True,
    kinds={"webdataset"},
)
def webdataset_export(
    context: dg.AssetExecutionContext, config: WebDatasetConfig, lakehouse: Lakehouse
) -> dg.MaterializeResult:
    started = time.perf_counter()
    manifest = _guarded(
        lambda: run_export(
            lakehouse,
            "webdataset",
            lambda rows, staging: write_webdataset(
                rows, staging, samples_per_shard=config.samples_per_shard
            ),
            with_images=True,
            run_id=context.run_id,
            config=config.model_dump(),
        )
    )
    return _result(context, lakehouse, "webdataset", manifest, time.perf_counter() - started)


def _guarded(export: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return export()
    except ExportError as error:
        raise dg.Failure(f"stage exports: {error}. The previous export is untouched.") from None


# -- PathGen-Instruct (LLaVA format) -------------------------------------------------------


class LlavaInstructConfig(dg.Config):
    """Slides with a larger share of quarantined instructions are blocked (left out)."""

    max_quarantine_share: float = InstructionConfig().max_quarantine_share


def run_instruction_export(
    lakehouse: Lakehouse, *, run_id: str, max_quarantine_share: float
) -> dict[str, Any]:
    """Write the LLaVA export from ``instructions`` (+ pairs and patch images); its manifest.

    Before ``instructions`` is first materialized the export is an empty list whose
    manifest says so (``config.note``).

    Raises:
        ExportError: ``training_pairs`` or ``patches`` is missing, an image is missing or changed, or the
            export's record count differs from the exportable rows of the table.
    """
    name = "llava_instruct"
    versions = pinned_versions(
        lakehouse, name, [TRAINING_PAIRS.name, DATASET_DUPLICATES.name, PATCHES.name]
    )
    instructions_version = lakehouse.version(INSTRUCTIONS.name)
    config = {"max_quarantine_share": max_quarantine_share}
    if instructions_version is None:
        # Instruction data is a stage of its own: before it first runs there is nothing to
        # export, which the manifest says (an empty list, not a failed whole-dataset run).
        with export_staging(lakehouse, name) as staging:
            summary = write_llava_json([], staging)
            config["note"] = "instructions never materialized: materialize it, then export again"
            return write_manifest(
                staging, summary, source_versions=versions, run_id=run_id, config=config
            )
    versions[INSTRUCTIONS.name] = instructions_version
    relation = source_relations(lakehouse, versions)
    with lakehouse.connect(views=False) as connection, export_staging(lakehouse, name) as staging:
        expected = count_exportable(
            connection,
            relation[INSTRUCTIONS.name],
            relation[TRAINING_PAIRS.name],
            max_quarantine_share=max_quarantine_share,
        )
        rows = iter_instructions(
            connection,
            relation[INSTRUCTIONS.name],
            relation[TRAINING_PAIRS.name],
            relation[PATCHES.name],
            max_quarantine_share=max_quarantine_share,
        )
        summary = write_llava_json(rows, staging)
        if summary.pairs != expected:
            raise ExportError(
                f"export {name}: wrote {summary.pairs} records for {expected} exportable "
                f"instructions of instructions v{versions[INSTRUCTIONS.name]}"
            )
        manifest = write_manifest(
            staging, summary, source_versions=versions, run_id=run_id, config=config
        )
    return manifest


@dg.asset(
    name="llava_instruct_export",
    deps=[INSTRUCTIONS.name, TRAINING_PAIRS.name, DATASET_DUPLICATES.name, PATCHES.name],
    check_specs=[coverage_spec("llava_instruct_export")],
    group_name=GROUP,
    kinds={"json", "jpeg"},
    description=(
        "PathGen-Instruct in LLaVA's training format: pathgen_instruct.json (id, image, "
        "conversations, type OPEN|CLOSE, wsi_id, file_id, position) and images/ beside it; "
        "quarantined rows and blocked slides left out."
    ),
)
def llava_instruct_export(
    context: dg.AssetExecutionContext, config: LlavaInstructConfig, lakehouse: Lakehouse
) -> dg.MaterializeResult:
    started = time.perf_counter()
    manifest = _guarded(
        lambda: run_instruction_export(
            lakehouse, run_id=context.run_id, max_quarantine_share=config.max_quarantine_share
        )
    )
    if "note" in manifest["config"]:
        context.log.warning(f"llava_instruct_export: {manifest['config']['note']}")
    return _result(context, lakehouse, "llava_instruct", manifest, time.perf_counter() - started)
