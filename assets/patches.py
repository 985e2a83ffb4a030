"""``patch_embeddings`` and ``patches``: PathGen stage A, representative patches per slide."""

import hashlib
import io
import json
import time
from dataclasses import asdict

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image

from assets.tiles import slide_row
from pathgen_dagster.lib.captions.verbalize import facts_sentence
from pathgen_dagster.lib.ingest.wsi import SlideReadError, open_slide, read_tiles
from pathgen_dagster.lib.schemas import PATCH_EMBEDDINGS, PATCHES, TILES
from pathgen_dagster.lib.selection.facts import resolve_mpp
from pathgen_dagster.lib.selection.prompts_library import PromptLibrary, load_report_findings
from pathgen_dagster.lib.selection.selection import (
    SelectionConfig,
    select,
    with_encoder_threshold,
)
from pathgen_dagster.metadata import column_schema, config_hash, picture, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.profiles import machine_profile
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse

_SELECTION = SelectionConfig()
JPEG_QUALITY = 90


class PatchEmbeddingsConfig(dg.Config):
    """Where the microns per pixel come from when the slide does not record them.

    Attributes:
        mpp_um: the slide's microns per pixel at level 0, from the scanner's documentation
            or the lab's records, for a slide whose file has none. None (the default): the
            slide's own value, or, without one, no scale at all: physical measures are
            unknown and captions say nothing that depends on scale. Never assumed.
    """

    mpp_um: float | None = None


@dg.asset(
    name=PATCH_EMBEDDINGS.name,
    partitions_def=slide_partitions,
    deps=[TILES.name],
    group_name="patches",
    kinds={"torch", "delta"},
    pool=machine_profile().encoder_pool,  # `gpu` only where the encoder has one
    description=PATCH_EMBEDDINGS.doc,
    metadata={"dagster/column_schema": column_schema(PATCH_EMBEDDINGS)},
)
def patch_embeddings(
    context: dg.AssetExecutionContext,
    config: PatchEmbeddingsConfig,
    lakehouse: Lakehouse,
    encoders: Encoders,
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    slide = slide_row(lakehouse, slide_id, PATCH_EMBEDDINGS.name)
    try:
        mpp, mpp_source = resolve_mpp(slide_id, slide["mpp_x"], config.mpp_um)
    except ValueError as error:
        raise dg.Failure(str(error)) from None
    tiles = lakehouse.read(TILES.name, slide_id=slide_id).sort("y", "x")
    started = time.perf_counter()
    embeddings: list[np.ndarray] = []
    facts = []
    try:
        with open_slide(slide["uri"]) as handle:
            # Batches bound memory: a 672 px RGB tile is 1.35 MB.
            for start in range(0, len(tiles), encoders.batch_size):
                batch = tiles.slice(start, encoders.batch_size)
                pixels = read_tiles(
                    handle, batch["x"].to_list(), batch["y"].to_list(), int(batch["size_px"][0])
                )
                batch_embeddings, batch_facts = encoders.embed_tiles(
                    pixels, mpp, mpp_source=mpp_source
                )
                embeddings.append(batch_embeddings)
                facts += batch_facts
    except SlideReadError as error:
        raise dg.Failure(f"slide {slide_id!r}, stage patch_embeddings: {error}") from None
    elapsed = time.perf_counter() - started
    site = slide["tissue_site"]
    frame = pl.DataFrame(
        {
            "tile_id": tiles["tile_id"],
            "slide_id": slide_id,
            "x": tiles["x"],
            "y": tiles["y"],
            "encoder_id": encoders.image_encoder_id,
            "dim": [len(e) for batch in embeddings for e in batch],
            "embedding": [e.tolist() for batch in embeddings for e in batch],
            "facts_json": [json.dumps(f.to_dict()) for f in facts],
            "facts_sentence": [facts_sentence(f, site) for f in facts],
            "cellularity": [f.cellularity for f in facts],
            "nuclei_density_per_mm2": [
                float(f.nuclei_density_per_mm2) if f.scale_known else None for f in facts
            ],
            "run_id": context.run_id,
            "config_hash": config_hash(encoders.model_dump()),
            "upstream_version": lakehouse.version(TILES.name),
        },
        schema_overrides={"dim": pl.Int32, "embedding": pl.List(pl.Float32)},
    )
    version = lakehouse.write_slide(PATCH_EMBEDDINGS.name, slide_id, frame)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            "encoder": encoders.image_encoder_id,
            "mpp": mpp,
            "mpp_source": mpp_source,
            "seconds": round(elapsed, 2),
            "embeddings_per_second": round(len(frame) / elapsed, 1) if elapsed and len(frame) else 0.0,
            "preview": preview(frame, ["tile_id", "cellularity", "nuclei_density_per_mm2", "facts_sentence"]),
        }
    )


class PatchesConfig(dg.Config):
    """Stage A selection knobs (PathGen defaults) and the optional report findings file."""

    top_k_attribute: int = _SELECTION.top_k_attribute
    top_k_report: int = _SELECTION.top_k_report
    tiles_per_cluster_budget: int = _SELECTION.tiles_per_cluster_budget
    cluster_scale: float = _SELECTION.cluster_scale
    max_per_slide: int = _SELECTION.max_per_slide
    # None: the image encoder's declared, calibrated threshold (scripts/calibrate_dedup.py).
    dedup_threshold: float | None = _SELECTION.dedup_threshold
    seed: int = _SELECTION.seed
    kmeans_iterations: int = _SELECTION.kmeans_iterations
    report_findings_path: str | None = None

    def selection(self) -> SelectionConfig:
        return SelectionConfig(**self.model_dump(exclude={"report_findings_path"}))


def jpeg_bytes(tile: np.ndarray) -> bytes:
    """The tile encoded as JPEG (quality 90, deterministic for the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def contact_sheet(images: list[bytes], columns: int = 8, thumb: int = 128) -> np.ndarray:
    """RGB grid of patch thumbnails for the UI."""
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), (255, 255, 255))
    for index, data in enumerate(images):
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((thumb - 4, thumb - 4))
        sheet.paste(image, ((index % columns) * thumb + 2, (index // columns) * thumb + 2))
    return np.asarray(sheet)


@dg.asset(
    name=PATCHES.name,
    partitions_def=slide_partitions,
    deps=[PATCH_EMBEDDINGS.name],
    group_name="patches",
    kinds={"torch", "delta"},
    description=PATCHES.doc,
    metadata={"dagster/column_schema": column_schema(PATCHES)},
)
def patches(
    context: dg.AssetExecutionContext,
    config: PatchesConfig,
    lakehouse: Lakehouse,
    encoders: Encoders,
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    slide = slide_row(lakehouse, slide_id, PATCHES.name)
    embedded = lakehouse.read(PATCH_EMBEDDINGS.name, slide_id=slide_id).sort("tile_id")
    tiles = lakehouse.read(TILES.name, slide_id=slide_id).select("tile_id", "level", "size_px", "mpp")
    library = PromptLibrary.load()
    site = library.resolve(slide["tissue_site"])
    findings = load_report_findings(config.report_findings_path).get(slide_id, [])
    selection_config = with_encoder_threshold(config.selection(), encoders.dedup_threshold)
    threshold_source = (
        "config" if config.dedup_threshold is not None else f"encoder {encoders.image_encoder_id}"
    )
    started = time.perf_counter()
    image_embeddings = np.array(embedded["embedding"].to_list(), dtype=np.float32)
    if not len(embedded):  # a slide without tissue tiles: an empty selection, not an error
        image_embeddings = image_embeddings.reshape(0, 1)
    retrieval = encoders.retrieval_embeddings(image_embeddings, embedded["facts_sentence"].to_list())
    prompt_embeddings = encoders.encode_texts(list(site.prompts))
    finding_embeddings = encoders.encode_texts(findings) if findings else None
    result = select(
        image_embeddings,
        prompt_emb=prompt_embeddings,
        finding_emb=finding_embeddings,
        retrieval_emb=retrieval,
        cfg=selection_config,
    )
    chosen = embedded[result.tile_index.tolist()].join(tiles, on="tile_id", how="left")
    selection_seconds = time.perf_counter() - started
    images: list[bytes] = []
    try:
        with open_slide(slide["uri"]) as handle:
            for row in chosen.iter_rows(named=True):
                tile = read_tiles(handle, [row["x"]], [row["y"]], row["size_px"], level=row["level"])[0]
                images.append(jpeg_bytes(tile))
    except SlideReadError as error:
        raise dg.Failure(f"slide {slide_id!r}, stage patches: {error}") from None
    prompts = list(site.prompts)
    chosen_facts = [json.loads(text) for text in chosen["facts_json"]]
    mpp_sources = [f.get("mpp_source", "slide") for f in chosen_facts]
    frame = pl.DataFrame(
        {
            "patch_id": chosen["tile_id"],
            "slide_id": slide_id,
            "x": chosen["x"],
            "y": chosen["y"],
            "level": chosen["level"],
            "size_px": chosen["size_px"],
            # The mpp the patch was measured at (the slide's or the configured one; null
            # when unknown), and where it came from.
            "mpp": [
                f["mpp_um"] if source != "unknown" else None
                for f, source in zip(chosen_facts, mpp_sources, strict=True)
            ],
            "mpp_source": mpp_sources,
            "reasons": result.reasons,
            "attribute_score": result.attribute_score.astype(np.float64),
            "report_score": result.report_score.astype(np.float64)
            if result.report_score is not None
            else [None] * len(result),
            "top_prompt": [prompts[i] for i in result.top_prompt.tolist()],
            "cluster_id": result.cluster_id.astype(np.int32),
            "k": result.k,
            "tissue_site": site.code,
            "prompt_library_version": library.version,
            "encoder_id": encoders.image_encoder_id,
            "text_encoder_id": encoders.text_encoder_id,
            "selection_config": json.dumps(
                {**asdict(selection_config), "dedup_threshold_source": threshold_source},
                sort_keys=True,
            ),
            "facts_json": chosen["facts_json"],
            "image_jpeg": images,
            "image_sha256": [hashlib.sha256(image).hexdigest() for image in images],
            "run_id": context.run_id,
            "config_hash": config_hash(config),
            "upstream_version": lakehouse.version(PATCH_EMBEDDINGS.name),
        },
        schema_overrides={
            "k": pl.Int32,
            "mpp": pl.Float64,
            "report_score": pl.Float64,
            "reasons": pl.List(pl.String),
            "image_jpeg": pl.Binary,
        },
    )
    version = lakehouse.write_slide(PATCHES.name, slide_id, frame)
    top_prompts = frame.group_by("top_prompt").len().sort("len", descending=True).head(5)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            "tiles_considered": len(embedded),
            "patches_selected": len(frame),
            "k": result.k,
            "dedup_threshold": selection_config.dedup_threshold,
            "dedup_threshold_source": threshold_source,
            "candidates_after_cap": result.n_after_cap,
            "per_cluster_quota": result.quota,
            "candidates_before_cap": result.n_candidates,
            "tissue_site": site.code,
            "report_findings": len(findings),
            "selection_seconds": round(selection_seconds, 3),
            "top_prompts_matched": dg.MetadataValue.md(
                "\n".join(
                    f"- {row['top_prompt']} ({row['len']} patches)"
                    for row in top_prompts.iter_rows(named=True)
                )
            ),
            "preview": preview(frame, ["patch_id", "reasons", "attribute_score", "cluster_id"]),
            **(picture(
                    contact_sheet(images),
                    lakehouse.put_artifact,
                    f"_artifacts/patches/{slide_id}.png",
                    "contact sheet",
                ) if images else {}),
        }
    )
