"""New slides in the landing zone become partitions, in capped batches (and, if asked, runs)."""

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pathgen_dagster.lib.ingest.registry import (
    LandingFile,
    RejectedFile,
    duplicate_reason,
    record_rejections,
    walk_landing,
)
from pathgen_dagster.lib.ingest.sources import sha256_file
from pathgen_dagster.lib.ingest.wsi import SlideReadError, inspect
from pathgen_dagster.lib.schemas import SLIDES
from pathgen_dagster.partitions import SLIDES_PARTITION, slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore

DEFAULT_BATCH_SIZE = 500
# Runs the sensor may request per tick when auto-run is on: the run queue
# (dagster.yaml `concurrency: runs: max_concurrent_runs`) drains them; the cap keeps one
# tick from queueing a whole landing zone at once.
DEFAULT_MAX_RUNS_PER_TICK = 20
AUTO_RUN_ENV = "PATHGEN_AUTO_RUN"
MAX_RUNS_PER_TICK_ENV = "PATHGEN_AUTO_RUN_MAX_PER_TICK"
SELECTION_ENV = "PATHGEN_AUTO_RUN_SELECTION"
SENSOR_RUN_TAG = "pathgen/trigger"


@dataclass(frozen=True)
class Discovery:
    """Slides new to the registry (at most one batch) and files rejected on the way."""

    new: list[LandingFile]
    rejected: list[RejectedFile]
    remaining: int
    digests: dict[str, str] = field(default_factory=dict)


def discover(
    landing: Path,
    known: set[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allowed_roots: tuple[Path, ...] = (),
    known_hashes: Mapping[str, tuple[str, str]] | None = None,
) -> Discovery:
    """Readable landing files not yet in ``known``, at most ``batch_size``; rejects recorded.

    Only new files are opened, so a tick over a landing zone of thousands of registered
    slides stays cheap. Rejected files (unreadable, skipped links, unsupported vendors,
    duplicates) count towards the batch so a zone full of broken files cannot make a tick
    unbounded. A readable file whose sha256 equals a registered slide's (``known_hashes``:
    sha256 -> (slide_id, uri)) or an earlier file's of this scan is a duplicate: recorded,
    never registered, so the same bytes are not processed twice.
    """
    files, skipped = walk_landing(landing, allowed_roots=allowed_roots)
    candidates = [f for f in files if f.slide_id not in known]
    skipped = [item for item in skipped if item.slide_id not in known]
    hashes = dict(known_hashes or {})
    digests: dict[str, str] = {}
    new, rejected = [], skipped[:batch_size]
    for landing_file in candidates[: max(0, batch_size - len(rejected))]:
        try:
            inspect(landing_file.path)
        except SlideReadError as error:
            rejected.append(RejectedFile(landing_file.slide_id, landing_file.path, str(error)))
            continue
        digest = sha256_file(landing_file.path)
        # The same id with the same bytes is this very slide (a re-registration), not a copy.
        if digest in hashes and hashes[digest][0] != landing_file.slide_id:
            original_id, original_uri = hashes[digest]
            reason = duplicate_reason(landing_file.path, original_id, original_uri, digest)
            rejected.append(RejectedFile(landing_file.slide_id, landing_file.path, reason))
            continue
        hashes[digest] = (landing_file.slide_id, str(landing_file.path))
        digests[landing_file.slide_id] = digest
        new.append(landing_file)
    handled = len(new) + len(rejected)
    remaining = max(0, len(candidates) + len(skipped) - handled)
    return Discovery(new, rejected, remaining=remaining, digests=digests)


def known_ids(instance: dg.DagsterInstance, lakehouse: Lakehouse) -> set[str]:
    """Slide ids already registered as partitions or already rejected."""
    registered = set(instance.get_dynamic_partitions(SLIDES_PARTITION))
    errors = lakehouse.read("slide_errors", columns=["slide_id"])
    return registered | set(errors["slide_id"].to_list())


def registered_hashes(lakehouse: Lakehouse) -> dict[str, tuple[str, str]]:
    """sha256 -> (slide_id, uri) of every slide already in the `slides` table."""
    rows = lakehouse.read(SLIDES.name, columns=["slide_id", "sha256", "uri"])
    return {row["sha256"]: (row["slide_id"], row["uri"]) for row in rows.iter_rows(named=True)}


class SlideSensorConfig(dg.Config):
    """Per-tick behaviour of the landing sensor."""

    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class AutoRunSettings:
    """Whether the landing sensor also requests runs for registered slides, and how many.

    Attributes:
        enabled: request one run per newly registered slide.
        max_runs_per_tick: at most this many run requests per tick; the rest wait for the
            next ticks, oldest registration first.
        selection: Dagster asset selection string (``*``, ``group:ingest``,
            ``key:slides or key:tiles`` ...); runs cover the slide-partitioned assets in it.
    """

    enabled: bool = False
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK
    selection: str = "*"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AutoRunSettings":
        """Settings from ``PATHGEN_AUTO_RUN`` (1/true/yes/on), ``PATHGEN_AUTO_RUN_MAX_PER_TICK``
        and ``PATHGEN_AUTO_RUN_SELECTION``.

        Read at every tick, never at import, from the code location's environment: the
        shell that starts ``dagster dev`` / the code server, or the ``.env`` file in the
        folder ``dagster dev`` starts in (which wins over the shell); restart to change it.
        """
        environ = os.environ if environ is None else environ
        enabled = environ.get(AUTO_RUN_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
        raw_cap = environ.get(MAX_RUNS_PER_TICK_ENV, "").strip()
        try:
            cap = int(raw_cap) if raw_cap else DEFAULT_MAX_RUNS_PER_TICK
        except ValueError:
            raise ValueError(
                f"{MAX_RUNS_PER_TICK_ENV}={raw_cap!r} is not an integer; "
                f"set it to a positive number of runs per sensor tick"
            ) from None
        if cap < 1:
            raise ValueError(f"{MAX_RUNS_PER_TICK_ENV} must be at least 1, got {cap}")
        selection = environ.get(SELECTION_ENV, "").strip() or "*"
        return cls(enabled=enabled, max_runs_per_tick=cap, selection=selection)


@dataclass(frozen=True)
class RunCursor:
    """How far along the registration order the sensor has requested runs.

    ``requested`` counts registered partitions already handled (requested, or skipped as
    already materialized); ``last`` is the last of them, to re-find the position if
    partitions were deleted in between.
    """

    requested: int = 0
    last: str | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> "RunCursor":
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(requested=int(data.get("requested", 0)), last=data.get("last"))

    def serialize(self) -> str:
        return json.dumps({"requested": self.requested, "last": self.last})

    def position(self, registered: Sequence[str]) -> int:
        """Index in ``registered`` of the first partition not yet handled."""
        if self.last is None:
            return 0
        if 0 < self.requested <= len(registered) and registered[self.requested - 1] == self.last:
            return self.requested
        try:
            return registered.index(self.last) + 1
        except ValueError:
            return min(self.requested, len(registered))


def slide_partitioned_assets(repository: dg.RepositoryDefinition, selection: str = "*") -> list[dg.AssetKey]:
    """Keys of the materializable slide-partitioned assets in ``selection``."""
    graph = repository.asset_graph
    try:
        selected = dg.AssetSelection.from_string(selection).resolve(graph)
    except Exception as error:
        raise ValueError(
            f"{SELECTION_ENV}={selection!r} is not a Dagster asset selection ({error}); "
            "try `*`, `group:ingest` or `key:slides or key:tiles`"
        ) from error
    keys = [
        key
        for key in selected
        if key in graph.materializable_asset_keys and graph.get(key).partitions_def == slide_partitions
    ]
    if not keys:
        raise ValueError(
            f"{SELECTION_ENV}={selection!r} selects no slide-partitioned asset; "
            "the landing sensor has nothing to run"
        )
    return sorted(keys, key=lambda key: key.to_user_string())


def plan_runs(
    registered: Sequence[str],
    cursor: RunCursor,
    already_done: set[str],
    *,
    max_runs: int,
) -> tuple[list[str], RunCursor]:
    """Slides to request runs for (oldest registration first, at most ``max_runs``).

    Slides already materialized (registered while auto-run was off and run by hand) are
    passed over without a run; the returned cursor points after the last slide handled.
    """
    start = cursor.position(registered)
    chosen: list[str] = []
    handled = start
    for slide_id in registered[start:]:
        if len(chosen) >= max_runs:
            break
        handled += 1
        if slide_id not in already_done:
            chosen.append(slide_id)
    if handled == start:
        return chosen, cursor
    return chosen, RunCursor(requested=handled, last=registered[handled - 1])


def auto_run_requests(
    context: dg.SensorEvaluationContext,
    new_keys: Sequence[str],
    settings: AutoRunSettings,
) -> tuple[list[dg.RunRequest], str | None]:
    """Run requests for registered slides not yet run, and the sensor's next cursor."""
    repository = context.repository_def
    if repository is None:
        raise dg.DagsterInvariantViolationError(
            "landing_sensor: auto-run needs the code location's definitions "
            "(pass definitions= to build_sensor_context in tests)"
        )
    selection = slide_partitioned_assets(repository, settings.selection)
    registered = list(context.instance.get_dynamic_partitions(SLIDES_PARTITION))
    # Partitions requested in this very tick are added before its runs are created.
    already_registered = set(registered)
    registered += [key for key in new_keys if key not in already_registered]
    done = set(context.instance.get_materialized_partitions(dg.AssetKey(SLIDES.name)))
    chosen, cursor = plan_runs(
        registered, RunCursor.parse(context.cursor), done, max_runs=settings.max_runs_per_tick
    )
    requests = [
        dg.RunRequest(
            run_key=f"slide-{slide_id}",
            partition_key=slide_id,
            asset_selection=selection,
            tags={SENSOR_RUN_TAG: "landing_sensor"},
        )
        for slide_id in chosen
    ]
    return requests, cursor.serialize() if cursor.last is not None else context.cursor


@dg.sensor(
    name="landing_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    target=dg.AssetSelection.all(),
    description="Registers slides that land in the landing zone as `slides` partitions "
    f"(at most {DEFAULT_BATCH_SIZE} per tick) and records unreadable files in slide_errors. "
    f"With {AUTO_RUN_ENV}=1 in the code location's environment it also requests one run "
    "per registered slide over every slide-partitioned asset, at most "
    f"{MAX_RUNS_PER_TICK_ENV} (default {DEFAULT_MAX_RUNS_PER_TICK}) per tick; "
    f"{SELECTION_ENV} narrows the assets (default: all).",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, lakehouse: Lakehouse, slide_store: SlideStore
) -> dg.SensorResult:
    from assets.slide_errors import slide_errors_observation

    discovery = discover(
        slide_store.path,
        known_ids(context.instance, lakehouse),
        allowed_roots=slide_store.link_roots,
        known_hashes=registered_hashes(lakehouse),
    )
    record_rejections(lakehouse, discovery.rejected)
    for item in discovery.rejected:
        context.log.warning(f"rejected {item.slide_id}: {item.reason}")
    keys = [f.slide_id for f in discovery.new]
    settings = AutoRunSettings.from_env()
    run_requests, cursor = (
        auto_run_requests(context, keys, settings) if settings.enabled else ([], context.cursor)
    )
    # The tick's message (a skip reason; Dagster shows none beside run requests, so then the
    # tick's log holds the rejections) says what was registered and what was rejected, why.
    skip_reason = None if run_requests else dg.SkipReason(tick_message(keys, discovery.rejected))
    return dg.SensorResult(
        # Rejections show on the slide_errors asset's page, not only in this tick's log.
        asset_events=[slide_errors_observation(lakehouse)] if discovery.rejected else [],
        run_requests=run_requests,
        dynamic_partitions_requests=[slide_partitions.build_add_request(keys)] if keys else [],
        cursor=cursor,
        skip_reason=skip_reason,
    )


def tick_message(registered: Sequence[str], rejected: Sequence[RejectedFile], *, shown: int = 5) -> str:
    """One line for a sensor tick: slides registered, files rejected with their reasons."""
    head = f"{len(registered)} new slide(s) registered" if registered else "no new slides"
    if not rejected:
        return head
    reasons = "; ".join(f"{item.path.name}: {item.reason}" for item in rejected[:shown])
    more = f"; and {len(rejected) - shown} more" if len(rejected) > shown else ""
    return (
        f"{head}; {len(rejected)} file(s) rejected and recorded in slide_errors "
        f"(see the slide_errors asset): {reasons}{more}"
    )


def register_landing(
    instance: dg.DagsterInstance,
    lakehouse: Lakehouse,
    landing: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allowed_roots: tuple[Path, ...] = (),
) -> tuple[list[str], list[RejectedFile]]:
    """Register every new readable slide as a partition, batch by batch (for scripts)."""
    added: list[str] = []
    all_rejected: list[RejectedFile] = []
    hashes = registered_hashes(lakehouse)
    while True:
        discovery = discover(
            landing,
            known_ids(instance, lakehouse) | set(added) | {r.slide_id for r in all_rejected},
            batch_size=batch_size,
            allowed_roots=allowed_roots,
            known_hashes=hashes,
        )
        for landing_file in discovery.new:
            hashes[discovery.digests[landing_file.slide_id]] = (
                landing_file.slide_id,
                str(landing_file.path),
            )
        record_rejections(lakehouse, discovery.rejected)
        all_rejected += discovery.rejected
        keys = [f.slide_id for f in discovery.new]
        if keys:
            instance.add_dynamic_partitions(SLIDES_PARTITION, keys)
            added += keys
        if not discovery.remaining:
            return added, all_rejected


WHOLE_DATASET_SENSOR = "whole_dataset_sensor"
_FINISHED_BACKFILLS = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED")


def whole_dataset_left_out(
    backfills: Sequence, asset_graph, *, after: float
) -> list[tuple[str, float, list[dg.AssetKey]]]:
    """Finished backfills (ended after ``after``) whose whole-dataset assets never ran.

    Dagster never launches an unpartitioned asset downstream of a failed partition in a
    backfill ("failed and downstream"). Returns (backfill id, end time, those asset keys),
    oldest first, for the backfills where that happened.
    """
    left_out = []
    for backfill in backfills:
        ended = backfill.backfill_end_timestamp
        if (
            not backfill.is_asset_backfill
            or backfill.status.value not in _FINISHED_BACKFILLS
            or ended is None
            or ended <= after
        ):
            continue
        data = backfill.get_asset_backfill_data(asset_graph)
        keys = sorted(
            (
                data.target_subset.non_partitioned_asset_keys
                - data.materialized_subset.non_partitioned_asset_keys
            )
            & set(asset_graph.materializable_asset_keys),
            key=lambda key: key.to_user_string(),
        )
        if keys:
            left_out.append((backfill.backfill_id, ended, keys))
    return sorted(left_out, key=lambda item: item[1])


@dg.sensor(
    name=WHOLE_DATASET_SENSOR,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=dg.AssetSelection.all(),
    description="After a backfill in which some slides failed, builds the whole-dataset "
    "assets it selected (dataset_stats, quarantine_report, exports) from the slides that "
    "passed; each build lists the slides it left out (check covers_every_slide, WARN).",
)
def whole_dataset_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    after = float(context.cursor) if context.cursor else 0.0
    if not context.cursor:
        # First tick: start from now, not from every backfill the instance ever ran.
        return dg.SensorResult(cursor=str(time.time()), skip_reason="watching backfills from now on")
    repository = context.repository_def
    pending = whole_dataset_left_out(
        context.instance.get_backfills(limit=100), repository.asset_graph, after=after
    )
    if not pending:
        return dg.SkipReason("no finished backfill left whole-dataset assets unbuilt")
    requests = [
        dg.RunRequest(
            run_key=f"whole-dataset-after-{backfill_id}",
            asset_selection=keys,
            tags={SENSOR_RUN_TAG: WHOLE_DATASET_SENSOR, "pathgen/after_backfill": backfill_id},
        )
        for backfill_id, _, keys in pending
    ]
    for backfill_id, _, keys in pending:
        context.log.info(
            f"backfill {backfill_id} left {', '.join(k.to_user_string() for k in keys)} unbuilt "
            "(a slide failed upstream): building them from the slides that passed"
        )
    return dg.SensorResult(run_requests=requests, cursor=str(pending[-1][1]))
