"""Per-slide asset checks: the blocking caption-fidelity gate, the GX suite and warnings.

Every check is partitioned by slide (``partitions_def=slide_partitions``, preview in Dagster
1.13), so it reads and judges exactly the slide its run materialized. Only the gate blocks:
when too many of a slide's captions fail severe rules it fails with ERROR severity and
Dagster does not build anything downstream of ``caption_quality`` (``training_pairs``) for
that slide in the run. The other checks warn.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from pathgen_dagster.config import CaptionQualityConfig
from pathgen_dagster.lib.quality.fidelity import (
    RULES,
    gate_slide,
    grounding_contradictions,
    pass_rates,
    ruleset_version,
)
from pathgen_dagster.lib.schemas import (
    CAPTION_QUALITY,
    CAPTIONS,
    DESCRIPTIONS,
    PATCHES,
    TILES,
    TRAINING_PAIRS,
)
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.metadata import preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.expectations import QUALITY_FOLDER, run_suite
from quality.report import data_docs_links

CAPTION_FIDELITY_GATE = "caption_fidelity_gate"
CAPTION_EXPECTATIONS = "caption_expectations"
CAPTIONS_FIT_CLIP = "captions_fit_clip_window"
CAPTION_AGENT_FAILURES = "caption_agent_failures"
DESCRIPTIONS_GROUNDED = "descriptions_grounded"


def _rates_metadata(rates: dict[str, float]) -> dict[str, float]:
    return {f"pass_rate_{name}": round(rate, 4) for name, rate in rates.items()}


def _rates_table(rates: dict[str, float]) -> dg.MetadataValue:
    lines = ["| rule | severity | pass rate |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.severity} | {rates[r.name]:.1%} |" for r in RULES]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset_check(
    asset=CAPTION_QUALITY.name,
    name=CAPTION_FIDELITY_GATE,
    partitions_def=slide_partitions,
    blocking=True,
    description=(
        "Blocks the slide's training data when more than max_severe_failure_rate of its "
        "captions fail a severe fidelity rule; pass rates per rule in the metadata."
    ),
)
def caption_fidelity_gate(
    context: dg.AssetCheckExecutionContext, config: CaptionQualityConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(CAPTION_QUALITY.name, slide_id=slide_id)
    checked = lakehouse.read(CAPTIONS.name, slide_id=slide_id, columns=["patch_id"])
    if rows.is_empty() and not checked.is_empty():
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"slide {slide_id!r}: {len(checked)} captions but no caption_quality rows; "
                "materialize caption_quality for this slide"
            ),
        )
    results = [json.loads(value) for value in rows["rule_results_json"]]
    gate = gate_slide(slide_id, results, max_rate=config.max_severe_failure_rate)
    rates = pass_rates(results)
    passed_captions = int(rows["passed"].sum()) if len(rows) else 0
    return dg.AssetCheckResult(
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=_gate_text(gate, passed_captions),
        metadata={
            "slide_id": slide_id,
            "captions": gate.captions,
            "passed_captions": passed_captions,
            "quarantined": int((~rows["passed"]).sum()) if len(rows) else 0,
            "severe_failures": gate.severe_failures,
            "severe_failure_rate": round(gate.severe_failure_rate, 4),
            "max_severe_failure_rate": config.max_severe_failure_rate,
            "failing_severe_rules": dg.MetadataValue.json(gate.failing_rules),
            "pass_rates": _rates_table(rates),
            **_rates_metadata(rates),
            "quarantined_preview": preview(
                rows.filter(~pl.col("passed")), ["patch_id", "failed_rules", "caption"]
            ),
        },
    )


def _gate_text(gate, passed_captions: int) -> str:
    """The gate's verdict in words that match the counts (a passed gate may still yield 0)."""
    if not gate.passed or not gate.captions:
        return gate.message
    text = (
        f"slide {gate.slide_id!r}: gate passed ({gate.severe_failures} of {gate.captions} "
        f"captions failed severe rules, limit {gate.max_rate:.0%}); {passed_captions} of "
        f"{gate.captions} captions passed every rule and enter training_pairs"
    )
    if passed_captions == 0:
        return text + (
            ". This slide yields NO training pairs: every caption failed a non-severe rule "
            "(see caption_quality WHERE NOT passed)."
        )
    return text + "."


@dg.asset_check(
    asset=CAPTION_QUALITY.name,
    name=CAPTION_EXPECTATIONS,
    partitions_def=slide_partitions,
    description=(
        "great-expectations suite over the slide's caption_quality rows (invariants and "
        "quality levels); data-docs HTML under `<lakehouse>/_quality/data_docs`."
    ),
)
def caption_expectations(
    context: dg.AssetCheckExecutionContext, config: CaptionQualityConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(CAPTION_QUALITY.name, slide_id=slide_id)
    # On an object store the suite writes into a local mirror of _quality/, uploaded after.
    with lakehouse.folder(QUALITY_FOLDER, mirror=True) as quality_folder:
        outcome = run_suite(
            rows,
            slide_id=slide_id,
            lakehouse_root=quality_folder.parent,
            config=config.fidelity(),
            ruleset_version=ruleset_version(),
        )

    def where(page: Path | None) -> str:
        if page is None:
            return "-"
        return lakehouse.location(Path(page).relative_to(quality_folder.parent.resolve()).as_posix())

    failed = [o for o in outcome.outcomes if not o.success]
    lines = ["| expectation | column | success | unexpected % |", "|---|---|---|---|"]
    lines += [
        f"| {o.expectation} | {o.column or ''} | {'yes' if o.success else 'NO'} | "
        f"{'' if o.unexpected_percent is None else f'{o.unexpected_percent:.1f}'} |"
        for o in outcome.outcomes
    ]
    page = where(outcome.validation_page or outcome.index_page)
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"slide {slide_id!r}: {outcome.successful}/{outcome.evaluated} expectations met"
            + (
                "; failed: " + ", ".join(f"{o.expectation}({o.column})" for o in failed)
                if failed
                else ""
            )
            + f". Data docs: {page}"
        ),
        metadata={
            "slide_id": slide_id,
            "rows": len(rows),
            "evaluated_expectations": outcome.evaluated,
            "successful_expectations": outcome.successful,
            "success_percent": round(100 * outcome.successful / max(outcome.evaluated, 1), 1),
            "expectations": dg.MetadataValue.md("\n".join(lines)),
            "data_docs": dg.MetadataValue.path(page),
            "data_docs_index": dg.MetadataValue.path(where(outcome.index_page)),
            **data_docs_links(_inside_docs(outcome.validation_page or outcome.index_page, quality_folder)),
            "gx_seconds": round(outcome.seconds, 3),
        },
    )


def _inside_docs(page: Path | None, quality_folder: Path) -> str | None:
    """``page``'s path inside the data-docs site (what `pathgen docs` serves), if any."""
    if page is None:
        return None
    return Path(page).resolve().relative_to((quality_folder / "data_docs").resolve()).as_posix()


@dg.asset_check(
    asset=CAPTIONS.name,
    name=CAPTIONS_FIT_CLIP,
    partitions_def=slide_partitions,
    description="Share of the slide's captions inside CLIP's 77-token window (warning).",
)
def captions_fit_clip_window(
    context: dg.AssetCheckExecutionContext, config: CaptionQualityConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(CAPTIONS.name, slide_id=slide_id, columns=["clip_tokens", "fits_clip"])
    share = float(rows["fits_clip"].mean()) if len(rows) else 1.0
    return dg.AssetCheckResult(
        passed=share >= config.min_share_fitting_clip,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"slide {slide_id!r}: {share:.1%} of {len(rows)} captions fit CLIP's window "
            f"(want >= {config.min_share_fitting_clip:.0%})"
        ),
        metadata={
            "slide_id": slide_id,
            "captions": len(rows),
            "share_fitting_clip": round(share, 4),
            "min_share_fitting_clip": config.min_share_fitting_clip,
            "clip_tokens_max": int(rows["clip_tokens"].max()) if len(rows) else 0,
            "clip_tokens_mean": round(float(rows["clip_tokens"].mean()), 1) if len(rows) else 0.0,
        },
    )


@dg.asset_check(
    asset=CAPTIONS.name,
    name=CAPTION_AGENT_FAILURES,
    partitions_def=slide_partitions,
    description="Share of the slide's captions that fell back to grounded text or failed.",
)
def caption_agent_failures(
    context: dg.AssetCheckExecutionContext, config: CaptionQualityConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(
        CAPTIONS.name, slide_id=slide_id, columns=["patch_id", "status", "failure_reason"]
    )
    counts = {
        status: int((rows["status"] == status).sum()) for status in ("ok", "fallback", "failed")
    }
    rate = (counts["fallback"] + counts["failed"]) / len(rows) if len(rows) else 0.0
    reasons = (
        rows.filter(pl.col("failure_reason").is_not_null())
        .group_by("failure_reason")
        .len()
        .sort("len", descending=True)
        .head(5)
    )
    return dg.AssetCheckResult(
        passed=rate <= config.max_agent_failure_rate,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"slide {slide_id!r}: {rate:.1%} of {len(rows)} captions fell back or failed "
            f"(limit {config.max_agent_failure_rate:.0%})"
        ),
        metadata={
            "slide_id": slide_id,
            "captions": len(rows),
            **{f"status_{status}": n for status, n in counts.items()},
            "failure_or_fallback_rate": round(rate, 4),
            "top_failure_reasons": dg.MetadataValue.md(
                "\n".join(
                    f"- {r['failure_reason']} ({r['len']})" for r in reasons.iter_rows(named=True)
                )
                or "none"
            ),
        },
    )


@dg.asset_check(
    asset=DESCRIPTIONS.name,
    name=DESCRIPTIONS_GROUNDED,
    partitions_def=slide_partitions,
    description="Share of the slide's descriptions that contradict the measured morphology.",
)
def descriptions_grounded(
    context: dg.AssetCheckExecutionContext, config: CaptionQualityConfig, lakehouse: Lakehouse
) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    rows = lakehouse.read(
        DESCRIPTIONS.name, slide_id=slide_id, columns=["patch_id", "description", "facts_json"]
    )
    found = [
        grounding_contradictions(
            row["description"], MorphologyFacts.from_dict(json.loads(row["facts_json"]))
        )
        for row in rows.iter_rows(named=True)
    ]
    contradicted = sum(bool(f) for f in found)
    rate = contradicted / len(rows) if len(rows) else 0.0
    examples = [
        f"- {pid}: {'; '.join(f[:2])}" for pid, f in zip(rows["patch_id"], found, strict=True) if f
    ][:10]
    return dg.AssetCheckResult(
        passed=rate <= config.max_contradiction_rate,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"slide {slide_id!r}: {contradicted} of {len(rows)} descriptions ({rate:.1%}) "
            f"contradict the measured morphology (limit {config.max_contradiction_rate:.0%})"
        ),
        metadata={
            "slide_id": slide_id,
            "descriptions": len(rows),
            "contradicted": contradicted,
            "contradiction_rate": round(rate, 4),
            "examples": dg.MetadataValue.md("\n".join(examples) or "none"),
        },
    )


TRAINING_PAIRS_YIELD = "training_pairs_yield"


@dg.asset_check(
    asset=TRAINING_PAIRS.name,
    name=TRAINING_PAIRS_YIELD,
    partitions_def=slide_partitions,
    description="Warns when the slide yields no training pairs (every caption quarantined, "
    "or no tissue, patches or captions upstream); counts per stage in the metadata.",
)
def training_pairs_yield(context: dg.AssetCheckExecutionContext, lakehouse: Lakehouse) -> dg.AssetCheckResult:
    slide_id = context.partition_key
    counts = {
        table: len(lakehouse.read(table, slide_id=slide_id, columns=["slide_id"]))
        for table in (TILES.name, PATCHES.name, CAPTIONS.name, TRAINING_PAIRS.name)
    }
    quality = lakehouse.read(CAPTION_QUALITY.name, slide_id=slide_id, columns=["passed"])
    passed = int(quality["passed"].sum()) if len(quality) else 0
    pairs = counts[TRAINING_PAIRS.name]
    if pairs:
        text = f"slide {slide_id!r}: {pairs} training pairs from {counts[CAPTIONS.name]} captions"
    else:
        # Say at which stage the slide ran dry, so the fix is the right one.
        empty = next((table for table, n in counts.items() if n == 0), TRAINING_PAIRS.name)
        why = (
            f"all {len(quality)} checked captions were quarantined "
            "(pathgen sql \"SELECT patch_id, failed_rules FROM caption_quality WHERE NOT passed\")"
            if len(quality)
            else f"`{empty}` has no rows for it"
        )
        text = f"slide {slide_id!r} yields NO training pairs: {why}"
    return dg.AssetCheckResult(
        passed=pairs > 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=text,
        metadata={
            "slide_id": slide_id,
            **counts,
            "captions_passed": passed,
            "quarantined": len(quality) - passed,
        },
    )
