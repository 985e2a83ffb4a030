"""The great-expectations suite over one slide's ``caption_quality`` rows, written as code.

GX 1.x runs in an ephemeral context (nothing to configure on disk) on a pandas frame (GX
has no polars support), with progress bars off. Two things persist under the lakehouse
root so a person can browse them: the validation results (JSON, one per slide and run) and
the data-docs HTML site built from all of them (``_quality/data_docs/index.html``).

great_expectations is imported inside the functions: it takes 2-4 s to import, and every
Dagster run process loads this module with the code location.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pathgen_dagster.lib.quality.fidelity import FidelityConfig

if TYPE_CHECKING:
    import great_expectations as gx

SUITE_NAME = "caption_quality"
DATA_DOCS_SITE = "pathgen_quality"
QUALITY_FOLDER = "_quality"

# List and embedding columns are summarised by the fidelity rules already; leaving them out
# keeps the frame small and the rendered docs readable.
VALIDATED_COLUMNS = (
    "patch_id",
    "slide_id",
    "caption",
    "caption_words",
    "clip_tokens",
    "description_words",
    "alignment_score",
    "alignment_mode",
    "caption_key",
    "max_duplicate_similarity",
    "duplicate_of",
    "deleted_fraction",
    "rule_results_json",
    "severe_failure",
    "quality_score",
    "passed",
    "ruleset_version",
)


def data_docs_dir(lakehouse_root: str | Path) -> Path:
    """``<lakehouse root>/_quality/data_docs``: the data-docs site (``index.html``)."""
    return Path(lakehouse_root).resolve() / QUALITY_FOLDER / "data_docs"


def results_dir(lakehouse_root: str | Path) -> Path:
    """``<lakehouse root>/_quality/gx_validations``: validation results as JSON."""
    return Path(lakehouse_root).resolve() / QUALITY_FOLDER / "gx_validations"


def build_suite(
    config: FidelityConfig, *, ruleset_version: str, alignment_mode: str = "minilm_facts"
) -> gx.ExpectationSuite:
    """The caption-quality expectations: table invariants and the slide's quality levels.

    Invariants must hold for every row (ids unique and present, scores in range, one rule
    set); quality levels allow the share of failures the blocking gate allows.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    tolerated = 1.0 - config.max_severe_failure_rate
    min_alignment = config.min_clip_score if alignment_mode == "clip" else config.min_alignment
    expectations = [
        gxe.ExpectColumnValuesToBeUnique(column="patch_id"),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=column)
            for column in ("patch_id", "slide_id", "passed", "rule_results_json", "caption_key")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="quality_score", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeInSet(column="ruleset_version", value_set=[ruleset_version]),
        gxe.ExpectColumnValuesToBeInSet(column="alignment_mode", value_set=[alignment_mode]),
        gxe.ExpectColumnValuesToNotBeNull(column="caption", mostly=tolerated),
        gxe.ExpectColumnValuesToBeBetween(
            column="clip_tokens",
            min_value=1,
            max_value=config.max_clip_tokens,
            mostly=config.min_share_fitting_clip,
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="caption", regex=r"[.!][\"')\]]*\s*$", mostly=tolerated
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="caption_words", min_value=config.min_caption_words, mostly=tolerated
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="description_words",
            min_value=config.min_description_words,
            max_value=config.max_description_words,
            mostly=tolerated,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="alignment_score", min_value=min_alignment, mostly=tolerated
        ),
        gxe.ExpectColumnValuesToBeUnique(column="caption_key", mostly=tolerated),
        gxe.ExpectColumnValuesToBeBetween(
            column="max_duplicate_similarity",
            max_value=config.near_duplicate_similarity,
            strict_max=True,
            mostly=tolerated,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="deleted_fraction",
            min_value=0.0,
            max_value=config.max_deleted_fraction,
            mostly=tolerated,
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="severe_failure", value_set=[False], mostly=tolerated
        ),
        gxe.ExpectColumnMeanToBeBetween(column="quality_score", min_value=tolerated),
    ]
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result on the slide."""

    expectation: str
    column: str | None
    success: bool
    unexpected_percent: float | None
    observed: object


@dataclass(frozen=True)
class SuiteOutcome:
    """The suite's verdict on one slide, and where to read it as HTML."""

    success: bool
    outcomes: list[ExpectationOutcome]
    validation_page: Path | None
    index_page: Path
    seconds: float

    @property
    def evaluated(self) -> int:
        return len(self.outcomes)

    @property
    def successful(self) -> int:
        return sum(o.success for o in self.outcomes)


def run_suite(
    rows: pl.DataFrame,
    *,
    slide_id: str,
    lakehouse_root: str | Path,
    config: FidelityConfig,
    ruleset_version: str,
) -> SuiteOutcome:
    """Validate one slide's ``caption_quality`` rows and rebuild the data docs.

    Args:
        rows: the slide's rows (any superset of :data:`VALIDATED_COLUMNS`).
        slide_id: the slide, used as the data asset and run name in the docs.
        lakehouse_root: root under which ``_quality/`` is written.
        config: thresholds (the same ones the fidelity rules and the gate use).
        ruleset_version: the rule-set id every row must carry.
    """
    modes = rows["alignment_mode"].unique().to_list() if len(rows) else []
    return validate_frame(
        lambda: build_suite(
            config,
            ruleset_version=ruleset_version,
            alignment_mode=modes[0] if len(modes) == 1 else "minilm_facts",
        ),
        rows.select(VALIDATED_COLUMNS).to_pandas(),
        lakehouse_root=lakehouse_root,
        run_name=slide_id,
        validation_name=f"{SUITE_NAME}-{slide_id}",
        asset_name=slide_id,
        batch_name="caption_quality",
    )


def validate_frame(
    make_suite: Callable[[], Any],
    frame: Any,
    *,
    lakehouse_root: str | Path,
    run_name: str,
    validation_name: str,
    asset_name: str,
    batch_name: str,
) -> SuiteOutcome:
    """Run the suite ``make_suite`` builds over a pandas ``frame`` in an ephemeral context;
    results and data docs go under ``lakehouse_root/_quality/`` (shared by every suite).

    The suite is built by a callable because great-expectations only builds suites once a
    data context is active.
    """
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
    # Everything stays in memory except results and docs, which outlive the run.
    project.stores["validation_results_store"] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(results),
        },
    }
    project.data_docs_sites = {
        DATA_DOCS_SITE: {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    }
    project.progress_bars = ProgressBarsConfig(globally=False)
    context = gx.get_context(mode="ephemeral", project_config=project)
    batch = (
        context.data_sources.add_pandas("lakehouse")
        .add_dataframe_asset(asset_name)
        .add_batch_definition_whole_dataframe(batch_name)
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=validation_name, data=batch, suite=context.suites.add(make_suite()))
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=validation_name,
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[DATA_DOCS_SITE])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(
        batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name)
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
