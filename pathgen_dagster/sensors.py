"""New slides in the landing zone become partitions, in capped batches."""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from pathgen_dagster.lib.registry import LandingFile, RejectedFile, landing_files
from pathgen_dagster.lib.schemas import SLIDE_ERRORS
from pathgen_dagster.lib.wsi import SlideReadError, inspect
from pathgen_dagster.partitions import SLIDES_PARTITION, slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class Discovery:
    """Slides new to the registry (at most one batch) and files rejected on the way."""

    new: list[LandingFile]
    rejected: list[RejectedFile]
    remaining: int


def discover(landing: Path, known: set[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> Discovery:
    """Readable landing files not yet in ``known``, at most ``batch_size``; rejects recorded.

    Only new files are opened, so a tick over a landing zone of thousands of registered
    slides stays cheap. Rejected files count towards the batch so a zone full of broken
    files cannot make a tick unbounded.
    """
    candidates = [f for f in landing_files(landing) if f.slide_id not in known]
    new, rejected = [], []
    for landing_file in candidates[:batch_size]:
        try:
            inspect(landing_file.path)
        except SlideReadError as error:
            rejected.append(RejectedFile(landing_file.slide_id, landing_file.path, str(error)))
        else:
            new.append(landing_file)
    return Discovery(new, rejected, remaining=max(0, len(candidates) - batch_size))


def record_slide_error(
    lakehouse: Lakehouse, slide_id: str, path: Path, *, stage: str, reason: str
) -> int:
    """Write (or replace) the slide's row in ``slide_errors``; returns the table version."""
    row = {
        "slide_id": slide_id,
        "uri": str(path.resolve()),
        "file_size": path.stat().st_size if path.exists() else 0,
        "stage": stage,
        "reason": reason,
        "detected_at": datetime.now(UTC),
    }
    return lakehouse.write_slide(SLIDE_ERRORS.name, slide_id, pl.DataFrame([row]))


def record_rejections(lakehouse: Lakehouse, rejected: list[RejectedFile]) -> None:
    """Write each rejected file to ``slide_errors`` (stage ``registry``)."""
    for item in rejected:
        record_slide_error(
            lakehouse, item.slide_id, item.path, stage="registry", reason=item.reason
        )


def known_ids(instance: dg.DagsterInstance, lakehouse: Lakehouse) -> set[str]:
    """Slide ids already registered as partitions or already rejected."""
    registered = set(instance.get_dynamic_partitions(SLIDES_PARTITION))
    errors = lakehouse.read("slide_errors", columns=["slide_id"])
    return registered | set(errors["slide_id"].to_list())


class SlideSensorConfig(dg.Config):
    """Per-tick behaviour of the landing sensor."""

    batch_size: int = DEFAULT_BATCH_SIZE


@dg.sensor(
    name="landing_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Registers slides that land in the landing zone as `slides` partitions "
    f"(at most {DEFAULT_BATCH_SIZE} per tick) and records unreadable files in slide_errors.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, lakehouse: Lakehouse, slide_store: SlideStore
) -> dg.SensorResult:
    discovery = discover(slide_store.path, known_ids(context.instance, lakehouse))
    record_rejections(lakehouse, discovery.rejected)
    keys = [f.slide_id for f in discovery.new]
    return dg.SensorResult(
        dynamic_partitions_requests=[slide_partitions.build_add_request(keys)] if keys else [],
        skip_reason=None
        if keys
        else dg.SkipReason(f"no new slides ({len(discovery.rejected)} rejected)"),
    )


def register_landing(
    instance: dg.DagsterInstance,
    lakehouse: Lakehouse,
    landing: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[list[str], list[RejectedFile]]:
    """Register every new readable slide as a partition, batch by batch (for scripts)."""
    added: list[str] = []
    all_rejected: list[RejectedFile] = []
    while True:
        discovery = discover(
            landing, known_ids(instance, lakehouse) | set(added), batch_size=batch_size
        )
        record_rejections(lakehouse, discovery.rejected)
        all_rejected += discovery.rejected
        keys = [f.slide_id for f in discovery.new]
        if keys:
            instance.add_dynamic_partitions(SLIDES_PARTITION, keys)
            added += keys
        if not discovery.remaining:
            return added, all_rejected
