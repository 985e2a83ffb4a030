"""The quality report the demo prints: pass rates per rule over every slide, and the docs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pathgen_dagster.lib.quality.fidelity import DEFAULT_CONFIG, RULES, gate_slide
from pathgen_dagster.lib.schemas import CAPTION_QUALITY
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.expectations import data_docs_dir


@dataclass(frozen=True)
class QualityReport:
    """Caption quality over the whole lakehouse.

    Attributes:
        rules: one row per rule: rule, severity, group, checked, passed, pass_rate.
        slides: one row per slide: captions, passed, quarantined, severe_failures,
            severe_failure_rate, gate ("pass" or "BLOCKED").
        data_docs: the great-expectations data-docs index (None before any check ran).
    """

    rules: pl.DataFrame
    slides: pl.DataFrame
    data_docs: Path | None

    def __str__(self) -> str:
        with pl.Config(
            tbl_rows=60, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_width_chars=160
        ):
            return (
                f"== caption quality: pass rate per rule ({self.slides['captions'].sum()} "
                f"captions, {len(self.slides)} slides)\n{self.rules}\n\n"
                f"== caption quality per slide\n{self.slides}\n\n"
                f"== great-expectations data docs: {self.data_docs or 'not built yet'}\n"
                '   quarantined captions: pathgen sql "SELECT slide_id, patch_id, '
                'failure_reasons FROM caption_quality WHERE NOT passed"'
            )


def quality_report(
    lakehouse: Lakehouse, *, max_severe_failure_rate: float = DEFAULT_CONFIG.max_severe_failure_rate
) -> QualityReport:
    """Pass rates per rule on all slides, the gate verdict per slide, and the docs path."""
    rows = lakehouse.read(
        CAPTION_QUALITY.name, columns=["slide_id", "rule_results_json", "passed", "severe_failure"]
    )
    results = [json.loads(value) for value in rows["rule_results_json"]]
    checked = len(results)
    rules = pl.DataFrame(
        {
            "rule": [r.name for r in RULES],
            "severity": [r.severity for r in RULES],
            "group": [r.group for r in RULES],
            "checked": [checked] * len(RULES),
            "passed": [sum(bool(res.get(r.name)) for res in results) for r in RULES],
        }
    ).with_columns(
        pass_rate=pl.when(pl.col("checked") > 0)
        .then((pl.col("passed") / pl.col("checked")).round(4))
        .otherwise(None)
    )
    by_slide: dict[str, list[dict]] = {}
    for slide_id, result in zip(rows["slide_id"], results, strict=True):
        by_slide.setdefault(slide_id, []).append(result)
    gates = [
        gate_slide(slide_id, by_slide[slide_id], max_rate=max_severe_failure_rate)
        for slide_id in sorted(by_slide)
    ]
    passed = (
        dict(rows.group_by("slide_id").agg(pl.col("passed").sum()).iter_rows()) if len(rows) else {}
    )
    slides = pl.DataFrame(
        {
            "slide_id": [g.slide_id for g in gates],
            "captions": [g.captions for g in gates],
            "passed": [int(passed.get(g.slide_id, 0)) for g in gates],
            "quarantined": [g.captions - int(passed.get(g.slide_id, 0)) for g in gates],
            "severe_failures": [g.severe_failures for g in gates],
            "severe_failure_rate": [round(g.severe_failure_rate, 4) for g in gates],
            "gate": ["pass" if g.passed else "BLOCKED" for g in gates],
        },
        schema={
            "slide_id": pl.String,
            "captions": pl.Int64,
            "passed": pl.Int64,
            "quarantined": pl.Int64,
            "severe_failures": pl.Int64,
            "severe_failure_rate": pl.Float64,
            "gate": pl.String,
        },
    )
    index = data_docs_dir(lakehouse.root) / "index.html"
    return QualityReport(rules=rules, slides=slides, data_docs=index if index.exists() else None)
