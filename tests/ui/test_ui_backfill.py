"""The Dagster UI end to end in a real browser: graph, backfill of every slide, checks.

A fresh site (sample slides registered with `pathgen register`, the shipped dagster.yaml
and pool limits) is served by `dagster dev`; Debian's Chromium, driven by Playwright, does
what a user does: opens the asset graph, launches "Materialize all" over all slide
partitions, waits on the backfill page, then reads the last stage's partition page and its
check results. What the pages show is compared with what the instance recorded and with
the Delta tables. The last stage is `captions` once it exists (then its checks must have a
verdict for every slide); until then it is `tiles`.

The same backfill through the GraphQL API, and the pool limits, are in
tests/instance/test_daemon_backfill.py (no browser needed).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import dagster as dg
import pytest

from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.lakehouse import Lakehouse
from tests.ui.conftest import new_page
from tests.ui.dagster_site import (
    DagsterDev,
    backfill_outcome,
    build_site,
    check_verdicts,
    describe_pipeline,
)
from tests.ui.pages import (
    backfill_row,
    dismiss_first_visit_dialogs,
    expand_all_groups,
    open_asset_graph,
    succeeded_count,
    wait_until_loaded,
)

pytestmark = [pytest.mark.ui, pytest.mark.slow]

BACKFILL_TIMEOUT_S = 900
GRAPH_VIEWPORT = {"width": 1920, "height": 1080}


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_landing: Path, browser):
    # `browser` first: where there is no Chromium the module skips before building anything.
    return build_site(tmp_path_factory.mktemp("ui") / "site", landing_from=sample_landing)


@pytest.fixture(scope="module")
def server(site, figures):
    with DagsterDev(site) as running:
        figures["dagster_dev_ready_seconds"] = round(running.started_seconds, 1)
        yield running


@pytest.fixture(scope="module")
def slide_ids(site) -> list[str]:
    with site.instance() as instance:
        return sorted(instance.get_dynamic_partitions(SLIDES_PARTITION))


@pytest.fixture(scope="module")
def pipeline(server):
    return describe_pipeline(server)


@pytest.fixture(scope="module")
def ui_backfill(browser, server, site, pipeline, slide_ids, artifacts, figures) -> dict:
    """What a user does: graph, Materialize all > All > Launch backfill, the backfill page
    until it finishes. Returns what the pages showed and what was measured."""
    context, page = new_page(browser)
    page.set_viewport_size(GRAPH_VIEWPORT)
    try:
        graph_seconds = open_asset_graph(page, server.url)
        dismiss_first_visit_dialogs(page)
        expand_all_groups(page)
        for name in ("slides", pipeline.final):
            page.get_by_text(name, exact=True).first.wait_for(state="visible")
        page.wait_for_timeout(1_000)  # let the layout animation settle for the screenshot
        page.screenshot(path=artifacts / "01-asset-graph.png")
        graph_text = page.inner_text("body")

        page.get_by_role("button", name=re.compile(r"Materialize all")).click()
        dialog = page.get_by_role("dialog")
        dialog_title = dialog.get_by_text(re.compile(r"Launch runs to materialize \d+ assets"))
        dialog_title.wait_for()
        dialog.get_by_role("button", name="All", exact=True).click()
        dialog.get_by_text(f"{len(slide_ids)} partitions", exact=True).first.wait_for()
        page.screenshot(path=artifacts / "02-launch-backfill-dialog.png")
        title = dialog_title.inner_text()
        launched = time.perf_counter()
        dialog.get_by_role("button", name="Launch backfill").click()
        toast = page.get_by_text(re.compile(r"Created backfill \w+"))
        toast.wait_for()
        backfill_id = toast.inner_text().strip().split()[-1]

        page.get_by_role("link", name="View", exact=True).click()
        page.wait_for_url(f"**/runs/b/{backfill_id}**")
        page.set_viewport_size({"width": 1600, "height": 1600})  # every row on screen
        state = server.wait_for_backfill(backfill_id, timeout=BACKFILL_TIMEOUT_S)
        page.reload()  # the page refreshes itself; a reload shows the end state at once
        status = page.get_by_text(re.compile(r"^(Succeeded|Failed|Canceled|Completed.*)$"))
        status.first.wait_for()
        wait_until_loaded(page)
        ui_seconds = time.perf_counter() - launched
        page.screenshot(path=artifacts / "03-backfill.png", full_page=True)
        rows = {name: backfill_row(page, name) for name in pipeline.names}
        status_label = status.first.inner_text().strip()
        page.set_viewport_size(GRAPH_VIEWPORT)
        open_asset_graph(page, server.url)
        expand_all_groups(page)
        page.get_by_text(pipeline.final, exact=True).first.wait_for(state="visible")
        page.wait_for_timeout(1_000)
        page.screenshot(path=artifacts / "04-asset-graph-after-backfill.png")
    finally:
        context.close()
    figures["asset_graph_load_seconds"] = round(graph_seconds, 2)
    figures["ui_backfill_seconds_click_to_page_done"] = round(ui_seconds, 1)
    figures["ui_backfill_seconds_instance"] = round(state["endTimestamp"] - state["timestamp"], 1)
    figures["ui_backfill_slides"] = len(slide_ids)
    figures["ui_backfill_assets"] = len(pipeline.names)
    figures["ui_backfill_status"] = state["status"]
    return {
        "backfill_id": backfill_id,
        "state": state,
        "dialog_title": title,
        "status_label": status_label,
        "rows": rows,
        "graph_text": graph_text,
    }


@pytest.fixture(scope="module")
def outcome(ui_backfill, site, pipeline):
    with site.instance() as instance:
        return backfill_outcome(instance, ui_backfill["backfill_id"], pipeline.names)


def test_asset_graph_and_dialog_show_the_whole_pipeline(ui_backfill, pipeline):
    for name in ("slides", "tiles", pipeline.final):
        assert name in ui_backfill["graph_text"]
    assert ui_backfill["dialog_title"] == (
        f"Launch runs to materialize {len(pipeline.materializable)} assets"
    )


def test_ui_backfill_ran_every_slide_and_the_page_agrees(ui_backfill, outcome, pipeline, slide_ids):
    state = ui_backfill["state"]
    assert state["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED"), state
    assert sorted(state["partitionNames"]) == slide_ids
    # A failed blocking check is a verdict on the data; any other failure is a bug.
    assert not outcome.unexpected_failures(), outcome.unexpected_failures()
    expected_label = "Succeeded" if state["status"] == "COMPLETED_SUCCESS" else "Failed"
    assert ui_backfill["status_label"] == expected_label
    for key in pipeline.partitioned:
        name = "/".join(key)
        shown = succeeded_count(ui_backfill["rows"][name])
        assert shown == len(outcome.materialized[name]), (name, ui_backfill["rows"][name])
    for stage in ("slides", "tiles", pipeline.final):
        assert sorted(outcome.materialized[stage]) == slide_ids, stage


def test_partition_page_shows_metadata_and_check_results(
    ui_backfill, outcome, browser, server, site, pipeline, slide_ids, artifacts
):
    slide_id = slide_ids[0]
    asset_key = dg.AssetKey(pipeline.final)
    with site.instance() as instance:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[slide_id]), limit=1
        ).records
        verdicts = {
            check: check_verdicts(instance, dg.AssetCheckKey(asset_key, check), outcome.run_ids)
            for check in pipeline.checks
        }
    metadata_keys = list(record.asset_materialization.metadata)
    assert {"dagster/row_count", "preview"} <= set(metadata_keys)

    context, page = new_page(browser)
    try:
        page.goto(f"{server.url}/assets/{pipeline.final}?view=partitions&partition={slide_id}")
        page.get_by_text("Materialized", exact=True).first.wait_for()
        for key in metadata_keys:
            page.get_by_text(key, exact=True).first.wait_for(state="visible")
        page.screenshot(path=artifacts / f"05-{pipeline.final}-partition.png", full_page=True)

        if pipeline.final == "tiles" and not pipeline.checks:
            page.goto(f"{server.url}/assets/{pipeline.final}?view=checks")
            page.get_by_text("No checks defined for this asset").wait_for()
            return
        assert pipeline.checks, "captions exists but has no asset checks"
        for number, check in enumerate(pipeline.checks, start=6):
            page.goto(f"{server.url}/assets/{pipeline.final}?view=checks&checkDetail={check}")
            page.get_by_text(check, exact=True).first.wait_for()
            page.get_by_role("tab", name="Partitions").last.click()
            passed = page.get_by_text(re.compile(r"^Passed \(\d+\)$")).first
            failed = page.get_by_text(re.compile(r"^Failed \(\d+\)$")).first
            passed.wait_for()
            shown = {
                "SUCCEEDED": int(re.search(r"\d+", passed.inner_text()).group()),
                "FAILED": int(re.search(r"\d+", failed.inner_text()).group()),
            }
            recorded = {
                status: sum(1 for v in verdicts[check].values() if v == status)
                for status in ("SUCCEEDED", "FAILED")
            }
            assert shown == recorded, (check, shown, recorded)
            # Open the slide's verdict and metadata (the list entry, not a hidden copy).
            page.get_by_text(slide_id, exact=True).filter(visible=True).last.click()
            page.wait_for_timeout(1_000)
            page.screenshot(path=artifacts / f"{number:02d}-check-{check}.png", full_page=True)
    finally:
        context.close()


def test_every_slide_has_rows_and_check_verdicts(ui_backfill, outcome, site, pipeline, slide_ids):
    lakehouse = Lakehouse(root=str(site.lakehouse))
    for table in ("slides", "tiles", pipeline.final):
        rows = lakehouse.read(table)
        assert sorted(set(rows["slide_id"].to_list())) == slide_ids, table
    if pipeline.final == "tiles" and not pipeline.checks:
        return
    assert pipeline.checks, "captions exists but has no asset checks"
    with site.instance() as instance:
        for check in pipeline.checks:
            key = dg.AssetCheckKey(dg.AssetKey(pipeline.final), check)
            verdicts = check_verdicts(instance, key, outcome.run_ids)
            assert sorted(verdicts) == slide_ids, (check, verdicts)
