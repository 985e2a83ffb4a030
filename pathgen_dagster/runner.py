"""Materialize the pipeline slide by slide in this process (the demo's and scripts' path).

The Dagster UI and ``dagster`` CLI backfills are the way to run many slides in parallel;
this runner is the short path for a laptop: one in-process run per slide, recorded in the
same instance so the UI shows every run. A failing slide is reported and the next one
starts: one bad slide never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class SlideOutcome:
    """How one slide's run ended."""

    slide_id: str
    success: bool
    run_id: str | None
    seconds: float
    error: str | None = None


def run_slides(
    instance: dg.DagsterInstance,
    slide_ids: Sequence[str],
    *,
    selection: str = "*",
    log_level: str = "WARNING",
    progress: Callable[[str], None] = lambda _: None,
) -> list[SlideOutcome]:
    """One in-process run per slide of the partitioned assets in ``selection``."""
    import time

    from dagster._core.utils import make_new_run_id

    from pathgen_dagster import run_health
    from pathgen_dagster.definitions import defs

    definitions = defs()
    repository = definitions.get_repository_def()
    graph = repository.asset_graph
    selected = dg.AssetSelection.from_string(selection).resolve(graph)
    partitioned = {key for key in selected if graph.get(key).partitions_def is not None}
    job = definitions.resolve_implicit_global_asset_job_def()
    outcomes = []
    for line in run_health.clear_dead_runs(instance).lines():  # a killed earlier run's slots
        progress(line)
    for index, slide_id in enumerate(slide_ids, start=1):
        started = time.perf_counter()
        try:
            run_id = make_new_run_id()
            with run_health.watch_run(instance, run_id, lambda line, s=slide_id: progress(f"{s}: {line}")):
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=slide_id,
                    asset_selection=sorted(partitioned),
                    raise_on_error=False,
                    run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                    tags={"pathgen/runner": "cli", **run_health.run_tags()},
                    run_id=run_id,
                )
            error = None if result.success else _first_error(result)
            outcome = SlideOutcome(
                slide_id, result.success, result.run_id, time.perf_counter() - started, error
            )
        except Exception as exc:  # a definition or instance error for this slide only
            outcome = SlideOutcome(slide_id, False, None, time.perf_counter() - started, str(exc))
        outcomes.append(outcome)
        status = "ok" if outcome.success else f"FAILED: {outcome.error}"
        progress(f"[{index}/{len(slide_ids)}] {slide_id}: {status} ({outcome.seconds:.1f}s)")
    return outcomes


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and "DagsterExecutionStepExecutionError" in error.message:
                error = error.cause
            return f"{event.step_key}: {error.message.strip()}"
    return "run failed"


def run_whole_dataset(
    instance: dg.DagsterInstance, *, selection: str = "*", log_level: str = "WARNING"
) -> dg.ExecuteInProcessResult:
    """One in-process run of the unpartitioned assets in ``selection`` (summaries, exports)."""
    from pathgen_dagster import run_health
    from pathgen_dagster.definitions import defs

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    selected = dg.AssetSelection.from_string(selection).resolve(graph)
    whole = sorted(
        key
        for key in selected
        if graph.get(key).partitions_def is None and graph.get(key).is_materializable
    )
    if not whole:
        # An empty selection would make Dagster run every asset, partitioned ones included.
        raise ValueError(f"selection {selection!r} holds no unpartitioned asset")
    return definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=whole,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"pathgen/runner": "cli", **run_health.run_tags()},
    )
