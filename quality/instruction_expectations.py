"""The great-expectations suite over one slide's ``instructions`` rows, written as code.

Same set-up as :mod:`quality.expectations` (ephemeral GX 1.x context, pandas frame,
progress bars off); results and data docs go to the same folders under the lakehouse root,
so the instruction suite shows beside the caption suite in ``_quality/data_docs``.
The frame carries, besides scalar columns, what the suite needs derived from the LLaVA
turns: ``<image>`` count, whether roles alternate, option count, and a question key per
exported row (unique per image).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import polars as pl

from pathgen_dagster.lib.instructions.conversation import GPT, HUMAN, IMAGE_TOKEN
from pathgen_dagster.lib.instructions.multiple_choice import LETTERS, N_OPTIONS
from pathgen_dagster.lib.instructions.rules import KINDS, Instruction, question_key
from quality.expectations import SuiteOutcome, validate_frame

SUITE_NAME = "instructions"


def suite_frame(rows: pl.DataFrame) -> pd.DataFrame:
    """The columns the suite validates, derived columns included, as pandas."""
    records = []
    for row in rows.iter_rows(named=True):
        turns = json.loads(row["turns_json"])
        roles = [t.get("from") for t in turns if isinstance(t, dict)]
        values = [str(t.get("value", "")) for t in turns if isinstance(t, dict)]
        instruction = Instruction(row["kind"], turns, row["question"], tuple(row["options"]))
        records.append(
            {
                "instruction_id": row["instruction_id"],
                "kind": row["kind"],
                "status": row["status"],
                "n_turns": row["n_turns"],
                "answer_letter": row["answer_letter"],
                "ruleset_version": row["ruleset_version"],
                "image_tokens": sum(v.count(IMAGE_TOKEN) for v in values),
                "roles_alternate": bool(roles)
                and len(roles) % 2 == 0
                and roles == [HUMAN, GPT] * (len(roles) // 2),
                "options_ok": len(row["options"]) == (N_OPTIONS if row["kind"] == "multiple_choice" else 0),
                "empty_values": sum(not v.replace(IMAGE_TOKEN, "").strip() for v in values),
                "exported_question": (
                    f"{row['image_sha256']}|{row['kind']}|{question_key(instruction)}"
                    if row["status"] == "ok"
                    else None
                ),
            }
        )
    return pd.DataFrame.from_records(records)


def build_suite(*, ruleset_version: str, max_quarantine_share: float):
    """The expectations every slide's instructions must meet."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for expectation in (
        gxe.ExpectColumnValuesToNotBeNull(column="instruction_id"),
        gxe.ExpectColumnValuesToBeUnique(column="instruction_id"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(KINDS)),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "quarantined"]),
        gxe.ExpectColumnValuesToBeInSet(column="answer_letter", value_set=list(LETTERS)),
        gxe.ExpectColumnValuesToBeBetween(column="n_turns", min_value=1, max_value=4),
        gxe.ExpectColumnValuesToBeBetween(column="image_tokens", min_value=1, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="empty_values", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="roles_alternate", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="options_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeUnique(column="exported_question"),
        gxe.ExpectColumnValuesToBeInSet(column="ruleset_version", value_set=[ruleset_version]),
        # The blocking rule in GX terms: at most max_quarantine_share of rows quarantined.
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=["ok"], mostly=round(1.0 - max_quarantine_share, 6)
        ),
    ):
        suite.add_expectation(expectation)
    return suite


def run_instruction_suite(
    rows: pl.DataFrame,
    *,
    slide_id: str,
    lakehouse_root: str | Path,
    ruleset_version: str,
    max_quarantine_share: float,
) -> SuiteOutcome:
    """Validate one slide's ``instructions`` rows and rebuild the data docs."""
    return validate_frame(
        lambda: build_suite(ruleset_version=ruleset_version, max_quarantine_share=max_quarantine_share),
        suite_frame(rows),
        lakehouse_root=lakehouse_root,
        run_name=slide_id,
        validation_name=f"{SUITE_NAME}-{slide_id}",
        asset_name=f"{slide_id}-instructions",
        batch_name="instructions",
    )
