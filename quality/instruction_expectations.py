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
import time
from pathlib import Path

import pandas as pd
import polars as pl

from pathgen_dagster.lib.instructions.conversation import GPT, HUMAN, IMAGE_TOKEN
from pathgen_dagster.lib.instructions.multiple_choice import LETTERS, N_OPTIONS
from pathgen_dagster.lib.instructions.rules import KINDS, Instruction, question_key
from quality.expectations import (
    DATA_DOCS_SITE,
    ExpectationOutcome,
    SuiteOutcome,
    data_docs_dir,
    results_dir,
)

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
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    started = time.perf_counter()
    docs, results = data_docs_dir(lakehouse_root), results_dir(lakehouse_root)
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    )
    project.stores["validation_results_store"] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(results)},
    }
    project.data_docs_sites = {
        DATA_DOCS_SITE: {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    }
    project.progress_bars = ProgressBarsConfig(globally=False)
    context = gx.get_context(mode="ephemeral", project_config=project)
    suite = context.suites.add(
        build_suite(ruleset_version=ruleset_version, max_quarantine_share=max_quarantine_share)
    )
    batch = (
        context.data_sources.add_pandas("lakehouse")
        .add_dataframe_asset(f"{slide_id}-instructions")
        .add_batch_definition_whole_dataframe("instructions")
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{SUITE_NAME}-{slide_id}", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{SUITE_NAME}-{slide_id}",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[DATA_DOCS_SITE])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(
        batch_parameters={"dataframe": suite_frame(rows)}, run_id=RunIdentifier(run_name=slide_id)
    )
    (identifier, validation_result), *_ = result.run_results.items()
    outcomes = [
        ExpectationOutcome(
            expectation=r.expectation_config.type,
            column=r.expectation_config.kwargs.get("column"),
            success=bool(r.success),
            unexpected_percent=r.result.get("unexpected_percent"),
            observed=r.result.get("observed_value"),
        )
        for r in validation_result.results
    ]
    urls = context.get_docs_sites_urls(resource_identifier=identifier, site_names=[DATA_DOCS_SITE])
    page = Path(urls[0]["site_url"].removeprefix("file://")) if urls else None
    return SuiteOutcome(
        success=bool(result.success),
        outcomes=outcomes,
        validation_page=page,
        index_page=docs / "index.html",
        seconds=time.perf_counter() - started,
    )
