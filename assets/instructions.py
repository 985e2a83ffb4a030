"""``instructions``: PathGen-Instruct conversations and multiple-choice items per slide."""

import json
import time
from collections import Counter

import dagster as dg
import polars as pl

from assets.captions import CacheWriter
from pathgen_dagster.lib.captions.agents import ResponseCache
from pathgen_dagster.lib.instructions.conversation import PairInput
from pathgen_dagster.lib.instructions.generate import (
    InstructionConfig,
    InstructionRow,
    build_slide,
)
from pathgen_dagster.lib.instructions.multiple_choice import LETTERS
from pathgen_dagster.lib.instructions.rules import (
    RULESET_VERSION,
    gate_slide,
    letter_balance,
    quarantine_shares,
)
from pathgen_dagster.lib.schemas import INSTRUCTIONS, LLM_RESPONSES, PATCHES, TRAINING_PAIRS
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.metadata import column_schema, config_hash, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer, agent_pool

_DEFAULTS = InstructionConfig()


class InstructionsConfig(dg.Config):
    """Knobs of the instruction stage (see ``InstructionConfig``)."""

    conversations_per_pair: int = _DEFAULTS.conversations_per_pair
    multiple_choice_per_pair: int = _DEFAULTS.multiple_choice_per_pair
    min_turns: int = _DEFAULTS.min_turns
    max_turns: int = _DEFAULTS.max_turns
    max_quarantine_share: float = _DEFAULTS.max_quarantine_share
    max_letter_share: float = _DEFAULTS.max_letter_share
    letter_balance_min_questions: int = _DEFAULTS.letter_balance_min_questions
    temperature: float = _DEFAULTS.temperature
    top_p: float = _DEFAULTS.top_p
    seed: int = _DEFAULTS.seed
    max_attempts: int = _DEFAULTS.max_attempts
    fallback_to_grounded: bool = _DEFAULTS.fallback_to_grounded
    max_tokens: int = _DEFAULTS.max_tokens

    def instruction(self) -> InstructionConfig:
        return InstructionConfig(**self.model_dump())


def pair_inputs(lakehouse: Lakehouse, slide_id: str) -> list[PairInput]:
    """The slide's training pairs (only pairs that passed the caption gates) with facts."""
    pairs = lakehouse.read(
        TRAINING_PAIRS.name,
        slide_id=slide_id,
        columns=["pair_id", "patch_id", "revised_description", "image_sha256"],
    )
    patches = lakehouse.read(
        PATCHES.name, slide_id=slide_id, columns=["patch_id", "facts_json", "image_jpeg"]
    )
    by_patch = {row["patch_id"]: row for row in patches.iter_rows(named=True)}
    inputs = []
    for row in pairs.sort("pair_id").iter_rows(named=True):
        patch = by_patch.get(row["patch_id"])
        if patch is None:
            raise dg.Failure(
                f"slide {slide_id!r}, stage instructions: pair {row['pair_id']!r} has no row in "
                "patches (re-selected after training_pairs was built); re-materialize "
                "training_pairs for this slide, then instructions"
            )
        inputs.append(
            PairInput(
                pair_id=row["pair_id"],
                patch_id=row["patch_id"],
                facts=MorphologyFacts.from_dict(json.loads(patch["facts_json"])),
                revised_description=row["revised_description"] or "",
                image_sha256=row["image_sha256"],
                image_jpeg=patch["image_jpeg"],
            )
        )
    return inputs


def instruction_frame(rows: list[InstructionRow], common: dict) -> pl.DataFrame:
    """The ``instructions`` rows of a slide, in the declared column order."""
    strings = pl.List(pl.String)
    frame = pl.DataFrame(
        {
            "instruction_id": [r.instruction_id for r in rows],
            "pair_id": [r.pair_id for r in rows],
            "patch_id": [r.patch_id for r in rows],
            "image_sha256": [r.image_sha256 for r in rows],
            "kind": [r.kind for r in rows],
            "turns_json": [json.dumps(r.turns, ensure_ascii=False) for r in rows],
            "n_turns": pl.Series([len(r.turns) // 2 for r in rows], dtype=pl.Int32),
            "question": pl.Series([r.question for r in rows], dtype=pl.String),
            "options": pl.Series([r.options for r in rows], dtype=strings),
            "answer_letter": pl.Series([r.answer_letter for r in rows], dtype=pl.String),
            "answer_text": pl.Series([r.answer_text for r in rows], dtype=pl.String),
            "grounding": pl.Series([r.grounding for r in rows], dtype=strings),
            "question_template_ids": pl.Series([r.question_template_ids for r in rows], dtype=strings),
            "backend": [r.backend for r in rows],
            "model_id": [r.model_id for r in rows],
            "template_id": [r.template_id for r in rows],
            "template_hash": [r.template_hash for r in rows],
            "sampling_json": [json.dumps(r.sampling, sort_keys=True) for r in rows],
            "attempts": pl.Series([r.attempts for r in rows], dtype=pl.Int32),
            "cache_hit": pl.Series([r.cache_hit for r in rows], dtype=pl.Boolean),
            "generation_status": [r.generation_status for r in rows],
            "generation_failure": pl.Series([r.generation_failure for r in rows], dtype=pl.String),
            "status": [r.status for r in rows],
            "failed_rules": pl.Series([r.failed_rules for r in rows], dtype=strings),
            "failure_reasons": pl.Series([r.failure_reasons for r in rows], dtype=strings),
        },
        schema_overrides={"instruction_id": pl.String},
    )
    types = {c.name: c.type for c in INSTRUCTIONS.columns}
    literals = {
        name: pl.lit(value, dtype=pl.Int64 if str(types[name]) == "int64" else pl.String)
        for name, value in common.items()
    }
    return frame.with_columns(**literals).select(INSTRUCTIONS.column_names)


def _examples(rows: list[InstructionRow]) -> dg.MetadataValue:
    """Three rendered examples (a conversation, a multiple-choice item, a quarantined row)."""
    picks = [
        next((r for r in rows if r.kind == "conversation" and r.status == "ok"), None),
        next((r for r in rows if r.kind == "multiple_choice" and r.status == "ok"), None),
        next((r for r in rows if r.status == "quarantined"), None),
    ]
    blocks = []
    for row in [r for r in picks if r is not None]:
        lines = [f"**{row.instruction_id}** ({row.kind}, {row.status})", ""]
        lines += [f"- *{t['from']}*: {t['value']}".replace("\n", "<br>") for t in row.turns]
        if row.failure_reasons:
            lines.append(f"- quarantined: {'; '.join(row.failure_reasons)}")
        blocks.append("\n".join(lines))
    return dg.MetadataValue.md("\n\n".join(blocks) or "no instructions")


@dg.asset(
    name=INSTRUCTIONS.name,
    deps=[TRAINING_PAIRS.name, PATCHES.name],
    description=INSTRUCTIONS.doc,
    metadata={"dagster/column_schema": column_schema(INSTRUCTIONS)},
    partitions_def=slide_partitions,
    group_name="instructions",
    pool=agent_pool(),  # `llm` only where the agents call a model server
    kinds={"llm", "delta"},
)
def instructions(
    context: dg.AssetExecutionContext,
    config: InstructionsConfig,
    lakehouse: Lakehouse,
    llm: LLMServer,
) -> dg.MaterializeResult:
    slide_id = context.partition_key
    pairs = pair_inputs(lakehouse, slide_id)
    cached = lakehouse.read(LLM_RESPONSES.name, slide_id=slide_id)
    writer = CacheWriter(lakehouse, slide_id)
    cache = ResponseCache({row["cache_key"]: row for row in cached.iter_rows(named=True)}, sink=writer)
    started = time.perf_counter()
    try:
        with llm.session() as session:
            rows = build_slide(slide_id, pairs, session=session, cache=cache, config=config.instruction())
    finally:
        writer.flush()
    seconds = time.perf_counter() - started
    common = {
        "slide_id": slide_id,
        "ruleset_version": RULESET_VERSION,
        "training_pairs_version": lakehouse.version(TRAINING_PAIRS.name),
        "patches_version": lakehouse.version(PATCHES.name),
        "run_id": context.run_id,
        "config_hash": config_hash(config.model_dump() | {"backend": llm.backend, "model": llm.model}),
        "upstream_version": lakehouse.version(TRAINING_PAIRS.name),
    }
    frame = instruction_frame(rows, common)
    version = lakehouse.write_slide(INSTRUCTIONS.name, slide_id, frame)
    kinds = Counter((r.kind, r.status) for r in rows)
    letters = [r.answer_letter for r in rows if r.answer_letter]
    balance = letter_balance(letters)
    shares = quarantine_shares([r.failed_rules for r in rows])
    gate = gate_slide(slide_id, [r.failed_rules for r in rows], max_share=config.max_quarantine_share)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            "pairs": len(pairs),
            "conversations": kinds[("conversation", "ok")],
            "multiple_choice": kinds[("multiple_choice", "ok")],
            "quarantined": sum(r.status == "quarantined" for r in rows),
            "fallbacks": sum(r.generation_status == "fallback" for r in rows),
            "cache_hits": cache.hits,
            "seconds": round(seconds, 2),
            "instructions_per_second": round(len(rows) / seconds, 1) if seconds else 0.0,
            "gate": gate.message,
            "letter_distribution": dg.MetadataValue.json(balance.counts),
            **{f"letter_share_{k}": round(balance.counts[k] / max(len(letters), 1), 3) for k in LETTERS},
            **{f"quarantine_share_{rule}": round(share, 3) for rule, share in shares.items()},
            "examples": _examples(rows),
            "preview": preview(frame, ["instruction_id", "kind", "status", "answer_letter"]),
        }
    )
