"""The ``lakehouse_maintenance`` job and its weekly schedule (off by default).

Compacts small files per table, writes checkpoints and vacuums under the lineage-safe
retention rule of :mod:`pathgen_dagster.lib.maintenance.tables` (docs/scale.md). Run it from
the UI (Jobs -> lakehouse_maintenance), turn the schedule on in Automation, or
``dg launch --job lakehouse_maintenance``. Best run when no backfill is writing: a compaction
racing a writer on the same slide loses and is retried a few times, then the job fails
(nothing half-done: each step is one Delta commit).
"""


import dagster as dg

from pathgen_dagster.lib.maintenance.tables import maintain, report_frame
from pathgen_dagster.metadata import preview
from pathgen_dagster.resources.lakehouse import Lakehouse

# Delta's own default: a file removed from the table less than a week ago is kept, so a
# reader or a run that started before maintenance can finish reading it.
DEFAULT_RETENTION_HOURS = 168


class MaintenanceConfig(dg.Config):
    """Maintenance knobs (launchpad)."""

    retention_hours: int = DEFAULT_RETENTION_HOURS
    z_order_slide_id: bool = False
    vacuum: bool = True
    tables: list[str] = []


@dg.op(description="compact, checkpoint and vacuum every table (lineage-pinned versions kept)")
def maintain_tables(
    context: dg.OpExecutionContext, config: MaintenanceConfig, lakehouse: Lakehouse
) -> dg.Output[None]:
    reports = maintain(
        lakehouse,
        retention_hours=config.retention_hours,
        tables=config.tables or None,
        z_order_slide_id=config.z_order_slide_id,
        vacuum=config.vacuum,
    )
    frame = report_frame(reports)
    for report in reports:
        context.log.info(
            f"{report.table}: v{report.version_before}->v{report.version_after}, "
            f"active files {report.active_files_before}->{report.active_files_after}, "
            f"stored {report.stored_files_before}->{report.stored_files_after}, "
            f"rows {report.rows_after}, pinned {report.pinned_versions[:10]}"
        )
    columns = [
        "table",
        "rows_after",
        "active_files_before",
        "active_files_after",
        "stored_files_before",
        "stored_files_after",
        "vacuumed_files",
    ]
    return dg.Output(
        None,
        metadata={
            "tables": len(reports),
            "active_files_before": int(frame["active_files_before"].sum()) if reports else 0,
            "active_files_after": int(frame["active_files_after"].sum()) if reports else 0,
            "report": preview(frame, columns, rows=len(reports)) if reports else "no tables",
        },
    )


@dg.job(description="Delta table maintenance (compaction, checkpoints, lineage-safe vacuum)")
def lakehouse_maintenance() -> None:
    maintain_tables()


maintenance_schedule = dg.ScheduleDefinition(
    name="weekly_lakehouse_maintenance",
    job=lakehouse_maintenance,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Sundays 03:00: lakehouse_maintenance (off by default; turn on in Automation)",
)
