"""``caption_quality``: every caption's fidelity measures and verdict, one slide at a time.

Failing captions are quarantined, never deleted: their rows stay here with the rules they
failed and why (``SELECT * FROM caption_quality WHERE NOT passed``), and ``training_pairs``
takes only rows that passed. Whether the slide as a whole may feed training is decided by
the blocking check in ``quality/checks.py``. Every verdict here depends on this slide's
rows only (never on which other slides were committed first).
"""

import io
import json
import time

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image

from pathgen_dagster.config import CaptionQualityConfig
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.quality.fidelity import (
    RULES,
    ReferenceCaptions,
    SlideInputs,
    judge,
    measure_slide,
    pass_rates,
    ruleset_version,
)
from pathgen_dagster.lib.schemas import (
    CAPTION_QUALITY,
    CAPTIONS,
    PATCHES,
    REVISED_DESCRIPTIONS,
)
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.metadata import column_schema, config_hash, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse

_FRAME_SCHEMA = pl.from_arrow(CAPTION_QUALITY.schema.empty_table()).schema


def clip_scores(
    encoders: Encoders, images: list[bytes | None], captions: list[str | None]
) -> list[float | None]:
    """CLIP score (100 x cosine of patch image and caption) per caption; None without text."""
    present = [
        i for i, (image, text) in enumerate(zip(images, captions, strict=True)) if image and text
    ]
    scores: list[float | None] = [None] * len(captions)
    if not present:
        return scores
    tiles = np.stack(
        [np.asarray(Image.open(io.BytesIO(images[i])).convert("RGB")) for i in present]
    )
    image_emb = encoders.clip.embed_images(tiles)
    text_emb = encoders.clip.encode([captions[i] for i in present])
    for i, value in zip(present, 100.0 * np.sum(image_emb * text_emb, axis=1), strict=True):
        scores[i] = float(value)
    return scores


@dg.asset(
    name=CAPTION_QUALITY.name,
    partitions_def=slide_partitions,
    deps=[CAPTIONS.name, REVISED_DESCRIPTIONS.name, PATCHES.name],
    group_name="quality",
    kinds={"python", "delta"},
    description=CAPTION_QUALITY.doc,
    metadata={"dagster/column_schema": column_schema(CAPTION_QUALITY)},
)
def caption_quality(
    context: dg.AssetExecutionContext,
    config: CaptionQualityConfig,
    lakehouse: Lakehouse,
    encoders: Encoders,
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    if lakehouse.version(CAPTIONS.name) is None:
        raise dg.Failure(
            f"slide {slide_id!r}, stage caption_quality: table `captions` has never been "
            "written; materialize `captions` for this slide first"
        )
    started = time.perf_counter()
    captions = lakehouse.read(CAPTIONS.name, slide_id=slide_id, columns=["patch_id", "caption"])
    revisions = lakehouse.read(
        REVISED_DESCRIPTIONS.name,
        slide_id=slide_id,
        columns=["patch_id", "draft", "revised", "edits_json", "evidence_json"],
    )
    use_clip = encoders.kind == "open_clip"
    patches = lakehouse.read(
        PATCHES.name,
        slide_id=slide_id,
        columns=["patch_id", "facts_json", "tissue_site", *(["image_jpeg"] if use_clip else [])],
    )
    caption_rows = captions.to_dicts()
    inputs = SlideInputs(
        captions=caption_rows,
        revisions={row["patch_id"]: row for row in revisions.iter_rows(named=True)},
        facts={
            row["patch_id"]: MorphologyFacts.from_dict(json.loads(row["facts_json"]))
            for row in patches.iter_rows(named=True)
        },
        tissue_sites=dict(zip(patches["patch_id"], patches["tissue_site"], strict=True)),
        # Re-measured by the second detector when the revision ran: the caption was
        # written from the first one, so this is the check that can see it was wrong.
        evidence={
            row["patch_id"]: Evidence.from_json(row["evidence_json"])
            for row in revisions.iter_rows(named=True)
        },
    )
    image_scores = None
    if use_clip:
        images = dict(zip(patches["patch_id"], patches["image_jpeg"], strict=True))
        image_scores = clip_scores(
            encoders,
            [images.get(row["patch_id"]) for row in caption_rows],
            [row["caption"] for row in caption_rows],
        )
    fidelity = config.fidelity()
    measured = measure_slide(
        inputs,
        encode=encoders.sentences.encode,
        # Only this slide's captions: a slide's verdicts never depend on which other
        # slides were committed before it (issue 16: two byte-identical slides checked
        # concurrently both passed, checked one after the other the second was
        # quarantined), and a slide costs work in proportion to itself. Duplicates
        # across slides are left to a whole-dataset step that decides them by content.
        reference=ReferenceCaptions(),
        image_text_scores=image_scores,
        config=fidelity,
    )
    judgements = [judge(m, fidelity) for m in measured.measures]
    measures = measured.measures
    frame = pl.DataFrame(
        {
            "patch_id": [m.patch_id for m in measures],
            "slide_id": slide_id,
            "caption": pl.Series([m.caption for m in measures], dtype=pl.String),
            "caption_words": pl.Series([m.caption_words for m in measures], dtype=pl.Int32),
            "clip_tokens": pl.Series([m.clip_tokens for m in measures], dtype=pl.Int32),
            "description_words": pl.Series([m.description_words for m in measures], dtype=pl.Int32),
            "unsupported_claims": pl.Series(
                [list(m.unsupported_claims) for m in measures], dtype=pl.List(pl.String)
            ),
            "contradictions": pl.Series(
                [list(m.contradictions) for m in measures], dtype=pl.List(pl.String)
            ),
            "description_contradictions": pl.Series(
                [list(m.description_contradictions) for m in measures], dtype=pl.List(pl.String)
            ),
            "evidence_disagreements": pl.Series(
                [list(m.evidence_disagreements) for m in measures], dtype=pl.List(pl.String)
            ),
            "alignment_score": pl.Series([m.alignment_score for m in measures], dtype=pl.Float64),
            "alignment_mode": [m.alignment_mode for m in measures],
            "caption_key": [m.caption_key for m in measures],
            "caption_embedding": pl.Series(measured.embeddings.tolist(), dtype=pl.List(pl.Float32)),
            "max_duplicate_similarity": pl.Series(
                [m.max_duplicate_similarity for m in measures], dtype=pl.Float64
            ),
            "duplicate_of": pl.Series([m.duplicate_of for m in measures], dtype=pl.String),
            "n_edits": pl.Series([m.n_edits for m in measures], dtype=pl.Int32),
            "deleted_fraction": pl.Series([m.deleted_fraction for m in measures], dtype=pl.Float64),
            "rule_results_json": [json.dumps(j.results) for j in judgements],
            "failed_rules": pl.Series(
                [list(j.failed) for j in judgements], dtype=pl.List(pl.String)
            ),
            "failure_reasons": pl.Series(
                [[f"{rule}: {why}" for rule, why in j.reasons.items()] for j in judgements],
                dtype=pl.List(pl.String),
            ),
            "severe_failure": pl.Series([j.severe_failure for j in judgements], dtype=pl.Boolean),
            "passed": pl.Series([j.passed for j in judgements], dtype=pl.Boolean),
            "quality_score": pl.Series([j.score for j in judgements], dtype=pl.Float64),
            "ruleset_version": ruleset_version(),
            "text_encoder_id": encoders.sentences.encoder_id,
            "run_id": context.run_id,
            "config_hash": config_hash(config),
            "upstream_version": lakehouse.version(CAPTIONS.name),
        },
        schema_overrides={"slide_id": pl.String, "ruleset_version": pl.String},
    ).select(CAPTION_QUALITY.column_names)
    frame = frame.cast(dict(_FRAME_SCHEMA))  # an empty slide's columns would be typed Null
    elapsed = time.perf_counter() - started
    version = lakehouse.write_slide(CAPTION_QUALITY.name, slide_id, frame)
    rates = pass_rates([j.results for j in judgements])
    quarantined = frame.filter(~pl.col("passed"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            "passed": int(frame["passed"].sum()),
            "quarantined": len(quarantined),
            "severe_failures": int(frame["severe_failure"].sum()),
            "ruleset_version": ruleset_version(),
            "alignment_mode": "clip" if use_clip else "minilm_facts",
            "seconds": round(elapsed, 2),
            "captions_per_second": round(len(frame) / elapsed, 1)
            if elapsed and len(frame)
            else 0.0,
            "pass_rate_per_rule": dg.MetadataValue.md(
                "| rule | severity | pass rate |\n|---|---|---|\n"
                + "\n".join(f"| {r.name} | {r.severity} | {rates[r.name]:.1%} |" for r in RULES)
            ),
            "quarantined_preview": preview(quarantined, ["patch_id", "failed_rules", "caption"]),
        }
    )
