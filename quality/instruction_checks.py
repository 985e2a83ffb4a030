"""Per-slide asset checks of ``instructions``: the blocking gate, letter balance, GX suite.

The gate re-judges every stored row with the rules of
:mod:`pathgen_dagster.lib.instructions.rules` against the patch's stored facts and the
pair's revised description, so it verifies the table as written, not what the asset said
about it: a row stored as ``ok`` that fails a rule now counts as failing. A slide whose
rows mostly fail is blocked (ERROR, blocking), with a message naming the slide and the
rules; the export leaves such slides out.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from pathgen_dagster.lib.instructions.generate import InstructionConfig
from pathgen_dagster.lib.instructions.rules import (
    RULES,
    RULESET_VERSION,
    Context,
    Instruction,
    duplicate_questions,
    gate_slide,
    judge,
    letter_balance,
    quarantine_shares,
)
from pathgen_dagster.lib.schemas import INSTRUCTIONS, PATCHES, TRAINING_PAIRS
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.expectations import QUALITY_FOLDER
from quality.instruction_expectations import run_instruction_suite

INSTRUCTIONS_GATE = "instructions_gate"
INSTRUCTION_LETTER_BALANCE = "instruction_letter_balance"
INSTRUCTION_EXPECTATIONS = "instruction_expectations"
_DEFAULTS = InstructionConfig()


class InstructionChecksConfig(dg.Config):
    """Thresholds of the instruction checks (the stage's defaults)."""

    max_quarantine_share: float = _DEFAULTS.max_quarantine_share
    max_letter_share: float = _DEFAULTS.max_letter_share
    letter_balance_min_questions: int = _DEFAULTS.letter_balance_min_questions


def rejudge(lakehouse: Lakehouse, slide_id: str, rows: pl.DataFrame) -> list[list[str]]:
    """Failed rules of every stored row: judged again from the stored turns and facts,
    plus the rules it was stored as failing."""
    patches = lakehouse.read(PATCHES.name, slide_id=slide_id, columns=["patch_id", "facts_json"])
    pairs = lakehouse.read(TRAINING_PAIRS.name, slide_id=slide_id, columns=["pair_id", "revised_description"])
    facts = {
        r["patch_id"]: MorphologyFacts.from_dict(json.loads(r["facts_json"]))
        for r in patches.iter_rows(named=True)
    }
    revised = {r["pair_id"]: r["revised_description"] or "" for r in pairs.iter_rows(named=True)}
    failed: list[list[str]] = []
    judged: list[tuple[str, Instruction]] = []
    for row in rows.iter_rows(named=True):
        instruction = Instruction(
            row["kind"],
            json.loads(row["turns_json"]),
            row["question"],
            tuple(row["options"]),
            row["answer_letter"],
        )
        judged.append((row["image_sha256"], instruction))
        if row["patch_id"] not in facts or row["pair_id"] not in revised:
            failed.append(["source_missing"])
            continue
        context = Context(facts[row["patch_id"]], revised[row["pair_id"]])
        found = [rule for rule, _ in judge(instruction, context)]
        # A row stays failed for what it failed when written (a rule may see more then,
        # e.g. a generation failure), and fails for anything the rules find now.
        found += [r for r in row["failed_rules"] if r not in found and r != "duplicate_question"]
        failed.append(found)
    for index in duplicate_questions(judged):
        failed[index].append("duplicate_question")
    return failed


@dg.asset_check(
    asset=INSTRUCTIONS.name,
    name=INSTRUCTIONS_GATE,
    partitions_def=slide_partitions,
    blocking=True,
    description=(
        "Re-judges every instruction row of the slide (structure, grounding, distractors, "
        "duplicates) and blocks the slide when more than max_quarantine_share fail."
    ),
)
def instructions_gate(
    context: dg.AssetCheckExecutionContext, config: InstructionChecksConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    return gate_result(lakehouse, context.partition_key, config)


def gate_result(
    lakehouse: Lakehouse, slide_id: str, config: InstructionChecksConfig
) -> dg.AssetCheckResult:
    """The gate's verdict on one slide's stored instructions."""
    rows = lakehouse.read(INSTRUCTIONS.name, slide_id=slide_id)
    failed = rejudge(lakehouse, slide_id, rows)
    gate = gate_slide(slide_id, failed, max_share=config.max_quarantine_share)
    stored_ok_now_failing = sum(
        1 for status, rules in zip(rows["status"], failed, strict=True) if status == "ok" and rules
    )
    shares = quarantine_shares(failed)
    lines = ["| rule | share failing |", "|---|---|"]
    lines += [f"| {name} | {share:.1%} |" for name, share in shares.items()]
    return dg.AssetCheckResult(
        passed=gate.passed and stored_ok_now_failing == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=gate.message
        + (
            f"; {stored_ok_now_failing} rows stored as ok fail a rule now: re-materialize "
            "instructions for this slide"
            if stored_ok_now_failing
            else ""
        ),
        metadata={
            "slide_id": slide_id,
            "rows": len(rows),
            "quarantined": gate.quarantined,
            "stored_ok_now_failing": stored_ok_now_failing,
            "rules": len(RULES),
            "quarantine_shares": dg.MetadataValue.md("\n".join(lines)),
        },
    )


@dg.asset_check(
    asset=INSTRUCTIONS.name,
    name=INSTRUCTION_LETTER_BALANCE,
    partitions_def=slide_partitions,
    description=(
        "No answer letter above max_letter_share of the slide's multiple-choice questions "
        "(from letter_balance_min_questions on; below, within one of an even split)."
    ),
)
def instruction_letter_balance(
    context: dg.AssetCheckExecutionContext, config: InstructionChecksConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(INSTRUCTIONS.name, slide_id=slide_id, columns=["kind", "answer_letter"])
    letters = rows.filter(pl.col("kind") == "multiple_choice")["answer_letter"].to_list()
    balance = letter_balance(
        letters,
        max_share=config.max_letter_share,
        min_questions=config.letter_balance_min_questions,
    )
    return dg.AssetCheckResult(
        passed=balance.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"slide {slide_id!r}: {balance.message}",
        metadata={"slide_id": slide_id, **{f"letter_{k}": v for k, v in balance.counts.items()}},
    )


@dg.asset_check(
    asset=INSTRUCTIONS.name,
    name=INSTRUCTION_EXPECTATIONS,
    partitions_def=slide_partitions,
    description="great-expectations suite over the slide's instructions (LLaVA shape, sets, "
    "uniqueness, quarantine share); results in the data docs.",
)
def instruction_expectations(
    context: dg.AssetCheckExecutionContext, config: InstructionChecksConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(INSTRUCTIONS.name, slide_id=slide_id)
    # On an object store the suite writes into a local mirror of _quality/, uploaded after.
    with lakehouse.folder(QUALITY_FOLDER, mirror=True) as quality_folder:
        outcome = run_instruction_suite(
            rows,
            slide_id=slide_id,
            lakehouse_root=quality_folder.parent,
            ruleset_version=RULESET_VERSION,
            max_quarantine_share=config.max_quarantine_share,
        )
    index_page = (
        lakehouse.location(Path(outcome.index_page).relative_to(quality_folder.parent.resolve()).as_posix())
        if outcome.index_page
        else "-"
    )
    failed = [f"{o.expectation}({o.column})" for o in outcome.outcomes if not o.success]
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"slide {slide_id!r}: {outcome.successful}/{outcome.evaluated} expectations met"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        ),
        metadata={
            "slide_id": slide_id,
            "evaluated": outcome.evaluated,
            "successful": outcome.successful,
            "seconds": round(outcome.seconds, 2),
            "data_docs": dg.MetadataValue.path(index_page),
        },
    )
