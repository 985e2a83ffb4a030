"""Materialize the pipeline slide by slide in this process (the demo's and scripts' path).

The Dagster UI and ``dagster`` CLI backfills are the way to run many slides in parallel;
this runner is the short path for a laptop: one in-process run per slide, recorded in the
same instance so the UI shows every run. A failing slide is reported and the next one
starts: one bad slide never stops the others.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
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
    isolate: bool = False,
    memory_limit_mb: int | None = None,
    jobs: int | None = None,
) -> list[SlideOutcome]:
    """One run per slide of the partitioned assets in ``selection``.

    With ``isolate`` each slide runs in its own child process (``python -m
    pathgen_dagster.runner``), so an out-of-memory kill or a crash of one slide is recorded
    as that slide's failure and the others go on; ``memory_limit_mb`` caps each child's
    address space (RLIMIT_AS), and ``jobs`` children run at once (default: the machine's
    profile, pathgen_dagster/profiles.py; the instance's pools still bound each stage).
    Without ``isolate``, the runs share this process, one after another.
    """
    if isolate:
        if jobs is None:
            from pathgen_dagster.profiles import machine_profile

            jobs = machine_profile().slides_at_once
        return _run_isolated(slide_ids, selection, log_level, progress, memory_limit_mb, jobs)
    if jobs not in (None, 1):
        raise ValueError(f"jobs={jobs}: slides in this process run one at a time; isolate them")

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
            say = functools.partial(_prefixed, progress, slide_id)
            with run_health.watch_run(instance, run_id, say), watch_stages(instance, run_id, say):
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


def _prefixed(progress: Callable[[str], None], slide_id: str, line: str) -> None:
    progress(f"{slide_id}: {line}")


_STAGE_EVENTS = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
}


def stage_lines(entries) -> list[str]:
    """Progress lines for a run's event-log entries: a stage starting, its rows and
    seconds when it materializes, a check's verdict, a failed step, the assets' own
    INFO messages (e.g. how many patches an agent is asked about)."""
    lines = []
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            if entry.level >= logging.INFO and entry.user_message and entry.step_key:
                lines.append(f"{entry.step_key}: {entry.user_message}")
            continue
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            lines.append(f"{entry.step_key}: started")
        elif kind == dg.DagsterEventType.STEP_FAILURE:
            lines.append(f"{entry.step_key}: FAILED")
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            metadata = event.event_specific_data.materialization.metadata
            rows = metadata.get("dagster/row_count")
            seconds = metadata.get("seconds")
            counts = f"{rows.value:,} rows" if rows is not None else "done"
            lines.append(
                f"{event.asset_key.to_user_string()}: {counts}"
                + (f" in {seconds.value:.1f}s" if seconds is not None else "")
            )
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            verdict = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
            lines.append(f"check {evaluation.check_name}: {verdict}")
    return lines


def watch_stages(
    instance: dg.DagsterInstance,
    run_id: str,
    progress: Callable[[str], None],
    *,
    poll_s: float = 2.0,
    heartbeat_s: float = 30.0,
) -> AbstractContextManager[None]:
    """While the block runs ``run_id``: say which stage runs, what each produced, and every
    ``heartbeat_s`` which stages are still running and for how long (a long slide is seen
    to move)."""
    from pathgen_dagster.run_health import polling

    cursor = None
    running: dict[str, float] = {}
    last_said = time.monotonic()

    def tick(finished: bool) -> bool:
        nonlocal cursor, last_said
        try:
            connection = instance.event_log_storage.get_records_for_run(run_id, cursor=cursor, limit=1000)
            cursor = connection.cursor
            entries = [record.event_log_entry for record in connection.records]
            lines = stage_lines(
                e for e in entries if e.dagster_event is None or e.dagster_event.event_type in _STAGE_EVENTS
            )
        except Exception as error:  # watching must never break the run it watches
            progress(f"progress: could not read the run's events ({type(error).__name__}: {error})")
            return False
        for entry in entries:
            event = entry.dagster_event
            if event is not None and event.event_type == dg.DagsterEventType.STEP_START:
                running[entry.step_key] = entry.timestamp
            elif event is not None and event.event_type in (
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            ):
                running.pop(entry.step_key, None)
        for line in lines:
            progress(line)
        now = time.monotonic()
        if lines:
            last_said = now
        elif running and now - last_said >= heartbeat_s:
            wall = time.time()
            steps = ", ".join(f"{step} ({wall - t:.0f}s)" for step, t in sorted(running.items()))
            progress(f"still running: {steps}")
            last_said = now
        return True

    return polling("pathgen-stage-progress", poll_s, tick)


def _run_isolated(
    slide_ids: Sequence[str],
    selection: str,
    log_level: str,
    progress: Callable[[str], None],
    memory_limit_mb: int | None,
    jobs: int,
) -> list[SlideOutcome]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if jobs < 1:
        raise ValueError(f"jobs={jobs}: at least one slide must run at a time")
    outcomes: dict[str, SlideOutcome] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pathgen-slide") as pool:
        futures = {
            pool.submit(_run_child, slide_id, selection, log_level, progress, memory_limit_mb): slide_id
            for slide_id in slide_ids
        }
        for done, future in enumerate(as_completed(futures), start=1):
            outcome = future.result()
            outcomes[outcome.slide_id] = outcome
            status = "ok" if outcome.success else f"FAILED: {outcome.error}"
            progress(f"[{done}/{len(slide_ids)}] {outcome.slide_id}: {status} ({outcome.seconds:.1f}s)")
    return [outcomes[slide_id] for slide_id in slide_ids]


def _run_child(
    slide_id: str,
    selection: str,
    log_level: str,
    progress: Callable[[str], None],
    memory_limit_mb: int | None,
) -> SlideOutcome:
    """One slide in a child process: its outcome, or why the process ended without one."""
    import json
    import signal
    import subprocess
    import sys
    import tempfile

    command = [sys.executable, "-m", "pathgen_dagster.runner", slide_id]
    command += ["--select", selection, "--log-level", log_level]
    if memory_limit_mb:
        command += ["--memory-limit-mb", str(memory_limit_mb)]
    started = time.perf_counter()
    reported = []
    with tempfile.TemporaryFile("w+") as stderr:
        # The child's progress (waiting for a pool slot, behind which run) is passed on
        # as it happens; its stderr goes to a file so a chatty child cannot block a pipe.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as child:
            for line in child.stdout:
                line = line.rstrip("\n")
                if line.startswith(_OUTCOME):
                    reported.append(line)
                elif line.startswith(_PROGRESS):
                    progress(line[len(_PROGRESS) :])
        stderr.seek(0)
        child_stderr = stderr.read()
    seconds = time.perf_counter() - started
    if reported:
        data = json.loads(reported[-1][len(_OUTCOME) :])
        return SlideOutcome(slide_id, data["success"], data["run_id"], seconds, data["error"])
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        hint = " (out of memory: the kernel's OOM killer?)" if name == "SIGKILL" else ""
        return SlideOutcome(
            slide_id, False, None, seconds, f"the slide's process was killed by {name}{hint}"
        )
    tail = (child_stderr.strip().splitlines() or ["no output"])[-1]
    return SlideOutcome(
        slide_id,
        False,
        None,
        seconds,
        f"the slide's process exited with code {child.returncode}: {tail}",
    )


_OUTCOME = "PATHGEN_SLIDE_OUTCOME "
_PROGRESS = "PATHGEN_SLIDE_PROGRESS "


def _child_main(argv: Sequence[str] | None = None) -> int:
    """Run one slide in this process and print its outcome as one JSON line."""
    import argparse
    import json
    import resource

    from pathgen_dagster.process_guard import die_with_parent

    parser = argparse.ArgumentParser(description="run one slide (used by `pathgen run`)")
    parser.add_argument("slide_id")
    parser.add_argument("--select", default="*")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--memory-limit-mb", type=int)
    args = parser.parse_args(argv)
    if args.memory_limit_mb:
        limit = args.memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # A `pathgen run` killed with SIGKILL takes its slide with it: the run is then dead
    # (its process gone), so its pool slots are freed, not held by an orphan.
    die_with_parent()
    quiet_console()
    own_status = f"[1/1] {args.slide_id}: "  # the parent prints its own status line

    def progress(line: str) -> None:
        if not line.startswith(own_status):
            print(_PROGRESS + line, flush=True)

    with dg.DagsterInstance.get() as instance:
        [outcome] = run_slides(
            instance, [args.slide_id], selection=args.select, log_level=args.log_level, progress=progress
        )
    print(
        _OUTCOME + json.dumps({"success": outcome.success, "run_id": outcome.run_id, "error": outcome.error}),
        flush=True,
    )
    return 0


def quiet_console() -> None:
    """Keep per-slide library noise off the console: preview/beta warnings, progress bars.

    The runs' own events still go to the instance (and the UI); only the terminal is spared.
    """
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in ("PreviewWarning", "BetaWarning", "SupersessionWarning"):
        cls = getattr(dg, category, None)
        if cls is not None:
            warnings.filterwarnings("ignore", category=cls)
    for name in ("sentence_transformers", "transformers", "great_expectations", "tifffile"):
        logging.getLogger(name).setLevel(logging.ERROR)


# Per-slide counts in the final table: (column, table, filter) read from the lakehouse.
_SUMMARY_COUNTS = (
    ("tiles", "tiles", None),
    ("patches", "patches", None),
    ("pairs", "training_pairs", None),
    ("quarantined", "caption_quality", "passed"),
)


def slide_summary(lakehouse, outcomes: Sequence[SlideOutcome]):
    """One row per slide: status, tiles, patches, pairs, quarantined captions, seconds."""
    import polars as pl

    frame = pl.DataFrame(
        {
            "slide": [o.slide_id for o in outcomes],
            "status": ["ok" if o.success else "FAILED" for o in outcomes],
            "seconds": [round(o.seconds, 1) for o in outcomes],
            "error": [o.error or "" for o in outcomes],
        },
        schema={"slide": pl.String, "status": pl.String, "seconds": pl.Float64, "error": pl.String},
    )
    for column, table, passed in _SUMMARY_COUNTS:
        rows = lakehouse.read(table, columns=["slide_id"] + ([passed] if passed else []))
        if passed:
            rows = rows.filter(~pl.col(passed))
        counts = rows.group_by("slide_id").len(name=column).rename({"slide_id": "slide"})
        frame = frame.join(counts, on="slide", how="left").with_columns(pl.col(column).fill_null(0))
    return frame.select("slide", "status", "tiles", "patches", "pairs", "quarantined", "seconds", "error")


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


if __name__ == "__main__":
    import os
    import sys

    sys.stdout.flush()
    os._exit(_child_main())  # delta-rs threads can abort a normal exit (FACTS.md)
