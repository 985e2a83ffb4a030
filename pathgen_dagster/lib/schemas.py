"""Every Delta table of the lakehouse: its columns, their Arrow types and one-line meanings.

The lakehouse writer checks each frame against these schemas before it writes, because
deltalake silently casts a wrong column type (FACTS.md: 0.5 into an int column became 0).
Table names are the asset names; every per-slide table is partitioned by ``slide_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, meaning, and whether nulls are allowed."""

    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: what it holds, its columns and how it is partitioned."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ("slide_id",)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.doc})
                for c in self.columns
            ]
        )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


# Provenance columns shared by every stage table (STYLE.md habit 6).
PROVENANCE = (
    Column("run_id", pa.string(), "Dagster run that wrote the row"),
    Column("config_hash", pa.string(), "sha256 (16 hex) of the stage config that produced the row"),
    Column(
        "upstream_version", pa.int64(), "Delta version of the upstream table that was read", True
    ),
)

SLIDE_ID = Column("slide_id", pa.string(), "sanitised slide id, the Dagster partition key")

SLIDES = TableSpec(
    "slides",
    "Slide registry: one row per readable whole-slide image in the landing zone.",
    (
        SLIDE_ID,
        Column("uri", pa.string(), "absolute path of the slide file"),
        Column("file_name", pa.string(), "original file name, before sanitising"),
        Column("vendor", pa.string(), "OpenSlide vendor (aperio, generic-tiff, ...)"),
        Column("mpp_x", pa.float64(), "microns per pixel along x at level 0", True),
        Column("mpp_y", pa.float64(), "microns per pixel along y at level 0", True),
        Column("objective_power", pa.float64(), "scanner objective magnification", True),
        Column("level_count", pa.int32(), "number of pyramid levels"),
        Column("level_dimensions", pa.string(), "JSON list of [width, height] per level"),
        Column("level_downsamples", pa.string(), "JSON list of downsample factors per level"),
        Column("width", pa.int64(), "level-0 width in pixels"),
        Column("height", pa.int64(), "level-0 height in pixels"),
        Column("file_size", pa.int64(), "file size in bytes"),
        Column("sha256", pa.string(), "sha256 of the slide file"),
        Column("tissue_site", pa.string(), "tissue site / cancer type used for prompts", True),
        Column("registered_at", pa.timestamp("us", tz="UTC"), "when the row was written"),
        Column("run_id", pa.string(), "Dagster run that wrote the row"),
    ),
)

SLIDE_ERRORS = TableSpec(
    "slide_errors",
    "Landing files that OpenSlide cannot read: not registered, kept with the reason.",
    (
        SLIDE_ID,
        Column("uri", pa.string(), "absolute path of the file"),
        Column("file_size", pa.int64(), "file size in bytes"),
        Column("stage", pa.string(), "stage that rejected the file"),
        Column("reason", pa.string(), "why the file was rejected, and the fix"),
        Column("detected_at", pa.timestamp("us", tz="UTC"), "when the error was recorded"),
    ),
)

TILES = TableSpec(
    "tiles",
    "Tissue tiles: the non-overlapping level-0 grid cells whose tissue fraction passes.",
    (
        Column("tile_id", pa.string(), "deterministic id: slide_id/x_y_size"),
        SLIDE_ID,
        Column("x", pa.int64(), "level-0 x of the tile's top-left corner"),
        Column("y", pa.int64(), "level-0 y of the tile's top-left corner"),
        Column("level", pa.int32(), "pyramid level the tile is read at"),
        Column("size_px", pa.int32(), "tile side in level-0 pixels"),
        Column("mpp", pa.float64(), "microns per pixel at level 0", True),
        Column("size_um", pa.float64(), "tile side in microns", True),
        Column("tissue_fraction", pa.float64(), "fraction of the tile covered by the tissue mask"),
        Column("blur_variance", pa.float64(), "variance of the Laplacian (low = blurred)"),
        Column("mean_saturation", pa.float64(), "mean HSV saturation in [0, 1]"),
        *PROVENANCE,
    ),
)

# -- Stage A: embeddings and representative patches -------------------------------------

PATCH_EMBEDDINGS = TableSpec(
    "patch_embeddings",
    "One image embedding per tile, plus the tile's measured morphology.",
    (
        Column("tile_id", pa.string(), "tile the embedding belongs to"),
        SLIDE_ID,
        Column("x", pa.int64(), "level-0 x of the tile"),
        Column("y", pa.int64(), "level-0 y of the tile"),
        Column(
            "encoder_id", pa.string(), "image encoder and version (morphology-v1, open_clip:...)"
        ),
        Column("dim", pa.int32(), "embedding length; every row of one encoder has the same"),
        Column(
            "embedding",
            pa.list_(pa.float32()),
            "L2-normalised embedding (Delta has no fixed-size list; length = dim, checked)",
        ),
        Column(
            "facts_json", pa.string(), "measured morphology of the tile (MorphologyFacts, JSON)"
        ),
        Column("facts_sentence", pa.string(), "the measured morphology as one factual sentence"),
        Column("cellularity", pa.string(), "measured cellularity band (low/moderate/high)"),
        Column("nuclei_density_per_mm2", pa.float64(), "nuclei per mm2 of tissue"),
        *PROVENANCE,
    ),
)

PATCHES = TableSpec(
    "patches",
    "Representative patches of a slide (PathGen stage A) with their 672 px JPEG images.",
    (
        Column("patch_id", pa.string(), "patch id (= tile id of the selected tile)"),
        SLIDE_ID,
        Column("x", pa.int64(), "level-0 x of the patch"),
        Column("y", pa.int64(), "level-0 y of the patch"),
        Column("level", pa.int32(), "pyramid level read"),
        Column("size_px", pa.int32(), "patch side in level-0 pixels"),
        Column("mpp", pa.float64(), "microns per pixel the patch was measured at; null: unknown", True),
        Column("mpp_source", pa.string(), "where mpp came from: slide, config or unknown"),
        Column("reasons", pa.list_(pa.string()), "why selected: attribute, report, cluster"),
        Column("attribute_score", pa.float64(), "max over site prompts of 100 x cosine"),
        Column("report_score", pa.float64(), "sum over report findings of 100 x cosine", True),
        Column("top_prompt", pa.string(), "the site prompt this patch matched best"),
        Column("cluster_id", pa.int32(), "K-means cluster of the patch"),
        Column("k", pa.int32(), "number of K-means clusters for the slide"),
        Column("tissue_site", pa.string(), "site whose prompts were used"),
        Column("prompt_library_version", pa.string(), "sha256 (12 hex) of the prompt library"),
        Column("encoder_id", pa.string(), "image encoder used for selection"),
        Column("text_encoder_id", pa.string(), "text encoder used for retrieval"),
        Column("selection_config", pa.string(), "selection config as JSON"),
        Column("facts_json", pa.string(), "measured morphology of the patch (JSON)"),
        Column("image_jpeg", pa.binary(), "the patch as JPEG bytes, size_px x size_px"),
        Column("image_sha256", pa.string(), "sha256 of image_jpeg"),
        *PROVENANCE,
    ),
)

# -- Stages B-D: caption agents ------------------------------------------------------------

AGENT_PROVENANCE = (
    Column("backend", pa.string(), "grounded, embedded or vllm"),
    Column("model_id", pa.string(), "model that wrote the text (or the grounded verbaliser id)"),
    Column("template_id", pa.string(), "prompt template id and version"),
    Column("template_hash", pa.string(), "sha256 (16 hex) of the prompt template"),
    Column("sampling_json", pa.string(), "sampling parameters and seed as JSON"),
    Column("prompt_tokens", pa.int64(), "tokens sent to the model (0 for grounded)"),
    Column("completion_tokens", pa.int64(), "tokens the model returned (0 for grounded)"),
    Column("latency_s", pa.float64(), "seconds the model took, summed over attempts"),
    Column("attempts", pa.int32(), "model calls made for this row (0 = cache or grounded)"),
    Column("finish_reason", pa.string(), "the model's finish reason", True),
    Column("cache_hit", pa.bool_(), "the text came from the response cache"),
    Column(
        "status", pa.string(), "ok, fallback (grounded text replaced a rejected output), failed"
    ),
    Column("failure_reason", pa.string(), "why the model output was rejected", True),
)

DESCRIPTIONS = TableSpec(
    "descriptions",
    "Description agent (stage B): a detailed morphology description of each patch.",
    (
        Column("patch_id", pa.string(), "patch described"),
        SLIDE_ID,
        Column("description", pa.string(), "the description", True),
        Column("facts_json", pa.string(), "measured facts the description is grounded in"),
        *AGENT_PROVENANCE,
        *PROVENANCE,
    ),
)

REVISED_DESCRIPTIONS = TableSpec(
    "revised_descriptions",
    "Revise agent (stage C): the corrected description and its structured edit log.",
    (
        Column("patch_id", pa.string(), "patch described"),
        SLIDE_ID,
        Column("draft", pa.string(), "the description agent's text", True),
        Column("revised", pa.string(), "the corrected description", True),
        Column("edits_json", pa.string(), "edit log: [{op, span, replacement, reason}] as JSON"),
        Column("n_edits", pa.int32(), "number of edits"),
        Column(
            "evidence_json",
            pa.string(),
            "the second nucleus detector's re-measurement the revision checked the draft "
            "against (lib/quality/evidence.py), JSON",
        ),
        *AGENT_PROVENANCE,
        *PROVENANCE,
    ),
)

CAPTIONS = TableSpec(
    "captions",
    "Summary agent (stage D): a caption that fits CLIP's 77-token window.",
    (
        Column("patch_id", pa.string(), "patch captioned"),
        SLIDE_ID,
        Column("caption", pa.string(), "the caption", True),
        Column("clip_tokens", pa.int32(), "CLIP BPE tokens including start and end"),
        Column("fits_clip", pa.bool_(), "clip_tokens <= 77"),
        *AGENT_PROVENANCE,
        *PROVENANCE,
    ),
)

LLM_RESPONSES = TableSpec(
    "llm_responses",
    "Response cache of every model call, written as results arrive (resumable runs).",
    (
        Column("cache_key", pa.string(), "sha256 of model, template hash, input hash, sampling"),
        SLIDE_ID,
        Column("agent", pa.string(), "description, revision or summary"),
        Column("patch_id", pa.string(), "patch the request was about"),
        Column("model_id", pa.string(), "model asked"),
        Column("template_hash", pa.string(), "prompt template hash"),
        Column("input_hash", pa.string(), "sha256 of the rendered messages"),
        Column("text", pa.string(), "what the model returned", True),
        Column("finish_reason", pa.string(), "finish reason", True),
        Column("prompt_tokens", pa.int64(), "prompt tokens"),
        Column("completion_tokens", pa.int64(), "completion tokens"),
        Column("latency_s", pa.float64(), "seconds"),
        Column("created_at", pa.timestamp("us", tz="UTC"), "when the answer arrived"),
    ),
)

# -- Quality -------------------------------------------------------------------------------

CAPTION_QUALITY = TableSpec(
    "caption_quality",
    "Every caption's quality measures, per-rule pass/fail and verdict (failures quarantined).",
    (
        Column("patch_id", pa.string(), "patch whose caption was checked"),
        SLIDE_ID,
        Column("caption", pa.string(), "the caption checked, exactly as in `captions`", True),
        Column("caption_words", pa.int32(), "words in the caption"),
        Column("clip_tokens", pa.int32(), "CLIP tokens including start and end (0 if no text)"),
        Column("description_words", pa.int32(), "words in the revised description"),
        Column(
            "unsupported_claims",
            pa.list_(pa.string()),
            "caption terms the revised description does not support: 'term [reason]'",
        ),
        Column(
            "contradictions",
            pa.list_(pa.string()),
            "caption claims the measured morphology contradicts: 'phrase: reason'",
        ),
        Column(
            "description_contradictions",
            pa.list_(pa.string()),
            "revised-description claims the measured morphology contradicts",
        ),
        Column(
            "evidence_disagreements",
            pa.list_(pa.string()),
            "caption claims about bands the two nucleus detectors measure differently",
        ),
        Column("alignment_score", pa.float64(), "image-text alignment score", True),
        Column("alignment_mode", pa.string(), "minilm_facts (default) or clip"),
        Column("caption_key", pa.string(), "sha256 (16 hex) of the case-folded words"),
        Column(
            "caption_embedding",
            pa.list_(pa.float32()),
            "MiniLM embedding of the caption (zeros if no text), for dataset-wide duplicates",
        ),
        Column(
            "max_duplicate_similarity",
            pa.float64(),
            "highest similarity to an earlier caption (this or another slide) with the same claims",
        ),
        Column("duplicate_of", pa.string(), "patch id of the (near-)duplicate caption", True),
        Column("n_edits", pa.int32(), "edits in the revise agent's log"),
        Column("deleted_fraction", pa.float64(), "share of the draft's words the revision removed"),
        Column("rule_results_json", pa.string(), "{rule: passed} for every rule, JSON"),
        Column("failed_rules", pa.list_(pa.string()), "rules that failed"),
        Column("failure_reasons", pa.list_(pa.string()), "'rule: why' for every failed rule"),
        Column("severe_failure", pa.bool_(), "a severe rule failed (counted by the slide gate)"),
        Column("quality_score", pa.float64(), "share of rules passed, 0-1"),
        Column("passed", pa.bool_(), "overall verdict: every rule passed (else quarantined)"),
        Column("ruleset_version", pa.string(), "quality rule-set version"),
        Column("text_encoder_id", pa.string(), "sentence encoder of embeddings and alignment"),
        *PROVENANCE,
    ),
)

# -- Training-ready dataset: SQL models in dbt_like_sql/ (one file per table) -------------


def _agent_lineage(agent: str, table: str) -> tuple[Column, ...]:
    return (
        Column(f"{agent}_backend", pa.string(), f"{table}.backend: grounded, embedded or vllm"),
        Column(f"{agent}_model_id", pa.string(), f"{table}.model_id: the model that wrote it"),
        Column(f"{agent}_template_hash", pa.string(), f"{table}.template_hash: prompt hash"),
        Column(f"{agent}_sampling_json", pa.string(), f"{table}.sampling_json: sampling + seed"),
    )


SQL_MODEL_PROVENANCE = (
    Column("run_id", pa.string(), "Dagster run that built the row"),
    Column("config_hash", pa.string(), "sha256 (16 hex) of the model's .sql file"),
)

TRAINING_PAIRS = TableSpec(
    "training_pairs",
    "Image-caption pairs that passed every quality rule, each with its full lineage.",
    (
        Column("pair_id", pa.string(), "pair id (= patch id: one caption per patch)"),
        SLIDE_ID,
        Column("patch_id", pa.string(), "patch of the pair (= tile id of the selected tile)"),
        Column("x", pa.int64(), "level-0 x of the patch"),
        Column("y", pa.int64(), "level-0 y of the patch"),
        Column("level", pa.int32(), "pyramid level read"),
        Column("size_px", pa.int32(), "patch side in level-0 pixels"),
        Column("mpp", pa.float64(), "microns per pixel at level 0", True),
        Column("tissue_site", pa.string(), "tissue site / cancer type of the slide", True),
        Column("image_sha256", pa.string(), "sha256 of the patch JPEG (patches.image_jpeg)"),
        Column("caption", pa.string(), "the caption (summary agent)"),
        Column("clip_tokens", pa.int32(), "CLIP BPE tokens of the caption incl. start and end"),
        Column("revised_description", pa.string(), "the revised description (revise agent)", True),
        Column("passed", pa.bool_(), "quality verdict (always true here: failures are excluded)"),
        Column("quality_score", pa.float64(), "share of quality rules passed, 0-1"),
        Column("alignment_score", pa.float64(), "image-text alignment score", True),
        Column("ruleset_version", pa.string(), "quality rule-set version that passed the pair"),
        Column("slide_uri", pa.string(), "slide file the patch was read from"),
        Column("slide_file_name", pa.string(), "original file name of the slide"),
        Column("slide_sha256", pa.string(), "sha256 of the slide file"),
        Column("selection_reasons", pa.list_(pa.string()), "attribute, report and/or cluster"),
        Column("selection_config", pa.string(), "patch selection config as JSON"),
        Column("attribute_score", pa.float64(), "max over site prompts of 100 x cosine"),
        Column("top_prompt", pa.string(), "the site prompt the patch matched best"),
        Column("cluster_id", pa.int32(), "K-means cluster of the patch"),
        Column("prompt_library_version", pa.string(), "sha256 (12 hex) of the prompt library"),
        Column("image_encoder_id", pa.string(), "image encoder used for selection"),
        Column("text_encoder_id", pa.string(), "text encoder used for retrieval"),
        *_agent_lineage("description", "descriptions"),
        *_agent_lineage("revision", "revised_descriptions"),
        *_agent_lineage("summary", "captions"),
        Column("slide_run_id", pa.string(), "Dagster run that registered the slide"),
        Column("patch_run_id", pa.string(), "Dagster run that selected the patch"),
        Column("description_run_id", pa.string(), "Dagster run of the description agent"),
        Column("revision_run_id", pa.string(), "Dagster run of the revise agent"),
        Column("summary_run_id", pa.string(), "Dagster run of the summary agent"),
        Column("quality_run_id", pa.string(), "Dagster run of the quality checks"),
        Column("slides_version", pa.int64(), "Delta version of slides that was read"),
        Column("patches_version", pa.int64(), "Delta version of patches that was read"),
        Column("descriptions_version", pa.int64(), "Delta version of descriptions that was read"),
        Column(
            "revised_descriptions_version",
            pa.int64(),
            "Delta version of revised_descriptions that was read",
        ),
        Column("captions_version", pa.int64(), "Delta version of captions that was read"),
        Column(
            "caption_quality_version", pa.int64(), "Delta version of caption_quality that was read"
        ),
        *SQL_MODEL_PROVENANCE,
    ),
)

DATASET_STATS = TableSpec(
    "dataset_stats",
    "Per tissue site (and 'all'): slides, checked captions, pairs, pass rate, token lengths.",
    (
        Column("tissue_site", pa.string(), "tissue site; 'all' for the whole dataset"),
        Column("slides", pa.int64(), "slides with at least one checked caption"),
        Column("checked", pa.int64(), "captions with a quality verdict"),
        Column("pairs", pa.int64(), "pairs that passed (rows of training_pairs)"),
        Column("quarantined", pa.int64(), "captions that failed a rule"),
        Column("severe_failures", pa.int64(), "captions that failed a blocking rule"),
        Column("pass_rate", pa.float64(), "pairs / checked", True),
        Column("pairs_per_slide", pa.float64(), "pairs / slides with pairs", True),
        Column("clip_tokens_p10", pa.float64(), "10th percentile of pair caption tokens", True),
        Column("clip_tokens_p50", pa.float64(), "median pair caption tokens", True),
        Column("clip_tokens_p90", pa.float64(), "90th percentile of pair caption tokens", True),
        Column("clip_tokens_max", pa.int32(), "longest pair caption in tokens", True),
        Column("mean_caption_words", pa.float64(), "mean words per pair caption", True),
        Column("failures_by_rule_json", pa.string(), "{rule: failed captions} as JSON"),
        Column("training_pairs_version", pa.int64(), "Delta version of training_pairs read"),
        Column("caption_quality_version", pa.int64(), "Delta version of caption_quality read"),
        *SQL_MODEL_PROVENANCE,
    ),
    partition_by=(),
)

QUARANTINE_REPORT = TableSpec(
    "quarantine_report",
    "Captions that failed a quality rule: kept out of training_pairs, listed with reasons.",
    (
        Column("patch_id", pa.string(), "patch whose caption failed"),
        SLIDE_ID,
        Column("tissue_site", pa.string(), "tissue site of the slide", True),
        Column("caption", pa.string(), "the quarantined caption", True),
        Column("reasons", pa.string(), "why it failed: 'rule: why' per failed rule, joined"),
        Column("failed_rules", pa.list_(pa.string()), "rules that failed"),
        Column("severe_failure", pa.bool_(), "a blocking rule failed"),
        Column("quality_score", pa.float64(), "share of rules passed, 0-1"),
        Column("unsupported_claims", pa.list_(pa.string()), "caption terms with no support"),
        Column("contradictions", pa.list_(pa.string()), "claims the morphology contradicts"),
        Column("duplicate_of", pa.string(), "patch id of the near-duplicate caption", True),
        Column("alignment_score", pa.float64(), "image-text alignment score", True),
        Column("clip_tokens", pa.int32(), "CLIP tokens of the caption"),
        Column("ruleset_version", pa.string(), "quality rule-set version"),
        Column("quality_run_id", pa.string(), "Dagster run of the quality checks"),
        Column("caption_quality_version", pa.int64(), "Delta version of caption_quality read"),
        *SQL_MODEL_PROVENANCE,
    ),
    partition_by=(),
)

DATASET_DUPLICATES = TableSpec(
    "dataset_duplicates",
    "Whole-dataset duplicates: near-duplicate images of a lower pair id (removed from the "
    "exports) and captions repeated for other images (reported only).",
    (
        Column("pair_id", pa.string(), "the duplicate pair (a row of training_pairs)"),
        SLIDE_ID,
        Column("kind", pa.string(), "image (embedding cosine >= threshold) or caption (same text)"),
        Column("action", pa.string(), "removed (images: left out of every export) or reported"),
        Column("duplicate_of", pa.string(), "the kept pair with the lowest id it duplicates"),
        Column("duplicate_slide_id", pa.string(), "slide of that pair"),
        Column("similarity", pa.float64(), "image cosine; 1.0 for a repeated caption"),
        Column("threshold", pa.float64(), "the image encoder's near-duplicate cosine", True),
        Column("image_encoder_id", pa.string(), "encoder whose embeddings were compared", True),
        Column("training_pairs_version", pa.int64(), "Delta version of training_pairs read"),
        Column("patch_embeddings_version", pa.int64(), "Delta version of patch_embeddings read"),
        *SQL_MODEL_PROVENANCE,
    ),
    partition_by=(),
)

# -- Instructions (PathGen-Instruct) -------------------------------------------------------

INSTRUCTIONS = TableSpec(
    "instructions",
    "PathGen-Instruct: conversations and multiple-choice questions per training pair, "
    "judged (failures quarantined, kept with reasons).",
    (
        Column("instruction_id", pa.string(), "<pair_id>_conv<n> or <pair_id>_mc<n>"),
        SLIDE_ID,
        Column("pair_id", pa.string(), "training pair the instruction is about"),
        Column("patch_id", pa.string(), "patch (image) of the pair"),
        Column("image_sha256", pa.string(), "sha256 of the patch JPEG (training_pairs.image_sha256)"),
        Column("kind", pa.string(), "conversation | multiple_choice"),
        Column("turns_json", pa.string(), "LLaVA conversations: [{from: human|gpt, value}] as JSON"),
        Column("n_turns", pa.int32(), "question-answer turns"),
        Column("question", pa.string(), "multiple-choice stem", True),
        Column("options", pa.list_(pa.string()), "multiple-choice options in letter order"),
        Column("answer_letter", pa.string(), "letter of the option consistent with the facts", True),
        Column("answer_text", pa.string(), "text of that option", True),
        Column(
            "grounding",
            pa.list_(pa.string()),
            "what grounds the answer: the measured fact and each distractor's contradiction "
            "(multiple choice), the source of each answer (conversation)",
        ),
        Column("question_template_ids", pa.list_(pa.string()), "question wording ids, per question"),
        Column("backend", pa.string(), "grounded, embedded or vllm"),
        Column("model_id", pa.string(), "model (or grounded generator) that wrote the answers"),
        Column("template_id", pa.string(), "prompt template id (model) or question template id"),
        Column("template_hash", pa.string(), "prompt template hash, or hash of the question catalogue"),
        Column("sampling_json", pa.string(), "sampling parameters as JSON"),
        Column("attempts", pa.int32(), "model requests made for the row"),
        Column("cache_hit", pa.bool_(), "an answer came from the response cache"),
        Column("generation_status", pa.string(), "ok, fallback (grounded answers) or failed"),
        Column("generation_failure", pa.string(), "why model answers were rejected", True),
        Column("status", pa.string(), "ok | quarantined (failed a rule; not exported)"),
        Column("failed_rules", pa.list_(pa.string()), "rules the row failed"),
        Column("failure_reasons", pa.list_(pa.string()), "'rule: why' per failed rule"),
        Column("ruleset_version", pa.string(), "instruction rule-set version"),
        Column("training_pairs_version", pa.int64(), "Delta version of training_pairs read", True),
        Column("patches_version", pa.int64(), "Delta version of patches read", True),
        *PROVENANCE,
    ),
)

# Later stages add their TableSpec constants above this line, one section per stage.
# -- end of table specs --

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in list(globals().values()) if isinstance(spec, TableSpec)
}
