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

from pathgen_dagster.lib.ingest.samples import write_faulty_files
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.report import DATA_DOCS_URL_ENV, serve_data_docs
from tests.conftest import write_blank_slide
from tests.ui.conftest import new_page
from tests.ui.dagster_site import (
    VENV_BIN,
    DagsterDev,
    backfill_outcome,
    build_site,
    check_verdicts,
    describe_pipeline,
    free_port,
    latest_ticks,
    wait_for_runs,
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


def passing(slide_ids: list[str]) -> list[str]:
    """The slides expected to run through (all but the damaged one)."""
    return [slide_id for slide_id in slide_ids if slide_id != DAMAGED]

BACKFILL_TIMEOUT_S = 1500
GRAPH_VIEWPORT = {"width": 1920, "height": 1080}


# Two slides a lab meets on day one, beside the samples: one all glass (it runs through and
# yields 0 pairs), one damaged after registration (cut short: it fails at `slides`).
ALL_GLASS = "ui-all-glass"
DAMAGED = "ui-damaged"
DOCS_PORT = free_port()
DOCS_URL = f"http://127.0.0.1:{DOCS_PORT}"


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_landing: Path, browser):
    # `browser` first: where there is no Chromium the module skips before building anything.
    site = build_site(
        tmp_path_factory.mktemp("ui") / "site",
        landing_from=sample_landing,
        register=False,
        extra_env={DATA_DOCS_URL_ENV: DOCS_URL},
    )
    # The real CMU slide is the one sample kept: the assertions are about what the UI says
    # of a good, an empty and a failing slide, and two fewer slides halve the backfill on
    # 2 shared cores (tests/instance/test_daemon_backfill.py runs every sample slide).
    for extra in sorted(site.landing.glob("synthetic-*")):
        extra.unlink()
    write_blank_slide(site.landing / f"{ALL_GLASS}.svs")
    write_blank_slide(site.landing / f"{DAMAGED}.svs", width=2048, height=2048)
    site.run(VENV_BIN / "pathgen", "register")
    damaged = site.landing / f"{DAMAGED}.svs"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    return site


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
    assert state["status"] == "COMPLETED_FAILED", state  # the damaged slide fails
    assert sorted(state["partitionNames"]) == slide_ids
    # A failed blocking check is a verdict on the data, the damaged slide's failure is
    # expected (and names it); any other failure is a bug.
    unexpected = [f for f in outcome.unexpected_failures() if repr(DAMAGED) not in f]
    assert not unexpected, unexpected
    assert any("truncated" in f and repr(DAMAGED) in f for f in outcome.step_failures)
    assert ui_backfill["status_label"] == "Failed"
    for key in pipeline.partitioned:
        name = "/".join(key)
        shown = succeeded_count(ui_backfill["rows"][name])
        assert shown == len(outcome.materialized[name]), (name, ui_backfill["rows"][name])
    for stage in ("slides", "tiles", pipeline.final):
        assert sorted(outcome.materialized[stage]) == passing(slide_ids), stage


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
        with_rows = [s for s in passing(slide_ids) if s != ALL_GLASS or table == "slides"]
        assert sorted(set(rows["slide_id"].to_list())) == with_rows, table
    if pipeline.final == "tiles" and not pipeline.checks:
        return
    assert pipeline.checks, "captions exists but has no asset checks"
    with site.instance() as instance:
        for check in pipeline.checks:
            key = dg.AssetCheckKey(dg.AssetKey(pipeline.final), check)
            verdicts = check_verdicts(instance, key, outcome.run_ids)
            assert sorted(verdicts) == passing(slide_ids), (check, verdicts)


WHOLE_DATASET_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def whole_dataset_run(ui_backfill, site):
    """The run whole_dataset_sensor launched after the failed backfill."""
    [run] = wait_for_runs(
        site,
        {"pathgen/trigger": "whole_dataset_sensor", "pathgen/after_backfill": ui_backfill["backfill_id"]},
        timeout=WHOLE_DATASET_TIMEOUT_S,
    )
    return run


def test_whole_dataset_assets_build_from_the_slides_that_passed(
    whole_dataset_run, browser, server, site, pipeline, slide_ids, artifacts
):
    assert whole_dataset_run.status == dg.DagsterRunStatus.SUCCESS, whole_dataset_run.status
    whole = [name for name in pipeline.names if tuple(name.split("/")) not in pipeline.partitioned]
    assert {"dataset_stats", "quarantine_report", "pathgen_json_export"} <= set(whole)
    with site.instance() as instance:
        for name in whole:
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event is not None and event.run_id == whole_dataset_run.run_id, name
            metadata = event.asset_materialization.metadata
            assert metadata["slides_missing"].value == [DAMAGED], name
            assert metadata["slides_included"].value == len(slide_ids) - 1, name
            [coverage] = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey(name), "covers_every_slide"), limit=1
            )
            assert coverage.status.value == "FAILED" and coverage.run_id == whole_dataset_run.run_id
            evaluation = coverage.event.dagster_event.event_specific_data
            assert evaluation.severity == dg.AssetCheckSeverity.WARN and DAMAGED in evaluation.description
    context, page = new_page(browser)
    try:
        page.goto(f"{server.url}/assets/dataset_stats")
        page.get_by_text("slides_missing", exact=True).first.wait_for()
        page.get_by_text(DAMAGED).first.wait_for()
        wait_until_loaded(page)
        page.screenshot(path=artifacts / "20-dataset_stats-after-failed-slide.png", full_page=True)
        page.set_viewport_size(GRAPH_VIEWPORT)
        open_asset_graph(page, server.url)
        expand_all_groups(page)
        page.get_by_text("dataset_stats", exact=True).first.wait_for(state="visible")
        page.wait_for_timeout(1_000)
        page.screenshot(path=artifacts / "21-asset-graph-after-whole-dataset-run.png")
    finally:
        context.close()


def test_a_slide_with_no_pairs_is_visible_as_a_warning(ui_backfill, browser, server, site, artifacts):
    with site.instance() as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("training_pairs"), "training_pairs_yield"), limit=100
        )
        record = next((r for r in history if r.partition == ALL_GLASS), None)
    assert record is not None and record.status.value == "FAILED"
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "yields NO training pairs" in evaluation.description
    context, page = new_page(browser)
    try:
        page.goto(f"{server.url}/assets/training_pairs?view=checks&checkDetail=training_pairs_yield")
        # The check's own page first: before it loads, "Partitions" is the asset's tab.
        page.get_by_text("training_pairs_yield", exact=True).first.wait_for()
        page.get_by_role("tab", name="Partitions").last.click()
        page.get_by_text(ALL_GLASS, exact=True).filter(visible=True).last.click()
        page.wait_for_timeout(1_000)
        page.screenshot(path=artifacts / "22-check-training_pairs_yield-all-glass.png", full_page=True)
        page.get_by_text(re.compile("yields NO training pairs")).first.wait_for()
        page.screenshot(path=artifacts / "22-check-training_pairs_yield-all-glass.png", full_page=True)
    finally:
        context.close()


def test_pages_show_whole_words_backend_overlay_and_placeholders(
    ui_backfill, browser, server, slide_ids, artifacts
):
    slide_id = slide_ids[0]
    context, page = new_page(browser)
    try:
        page.goto(f"{server.url}/assets/captions?view=partitions&partition={slide_id}")
        page.get_by_text("backend", exact=True).first.wait_for()
        wait_until_loaded(page)
        text = page.inner_text("body")
        assert "grounded" in text  # the backend that wrote the captions, named
        assert "…" in text  # long captions cut at a word, with an ellipsis
        page.screenshot(path=artifacts / "23-captions-preview.png", full_page=True)

        page.goto(f"{server.url}/assets/tiles?view=partitions&partition=CMU-1-Small-Region")
        page.get_by_text("Materialized", exact=True).first.wait_for()
        # A long markdown value is folded behind "[Show Markdown]"; it opens in a dialog.
        page.get_by_text("[Show Markdown]").first.click()
        picture = page.locator("img[alt='tissue mask and tile grid']").first
        picture.wait_for()
        page.wait_for_timeout(500)
        box = picture.bounding_box()
        page.screenshot(path=artifacts / "24-tiles-overlay-cmu.png", full_page=True)
        assert box and max(box["width"], box["height"]) >= 300, box
        page.keyboard.press("Escape")

        page.goto(f"{server.url}/assets/caption_quality?view=checks&checkDetail=caption_expectations")
        page.get_by_text(re.compile(r"<lakehouse>/_quality/data_docs")).first.wait_for()
    finally:
        context.close()


def test_data_docs_link_opens_in_the_browser(ui_backfill, browser, server, site, slide_ids, artifacts):
    slide_id = slide_ids[0]
    context, page = new_page(browser)
    try:
        with serve_data_docs(Lakehouse(root=str(site.lakehouse)), port=DOCS_PORT):
            page.goto(f"{server.url}/assets/caption_quality?view=checks&checkDetail=caption_expectations")
            page.get_by_text("caption_expectations", exact=True).first.wait_for()
            page.get_by_role("tab", name="Partitions").last.click()
            page.get_by_text(slide_id, exact=True).filter(visible=True).last.click()
            page.wait_for_timeout(1_000)
            page.screenshot(path=artifacts / "25-check-caption_expectations-links.png", full_page=True)
            link = page.locator(f"a[href^='{DOCS_URL}/']").first
            link.wait_for()
            page.screenshot(path=artifacts / "25-check-caption_expectations-links.png", full_page=True)
            href = link.get_attribute("href")
            response = page.goto(href)
            assert response is not None and response.status == 200, href
            assert slide_id in response.text(), href  # the slide's own validation page
            page.wait_for_load_state()
            page.screenshot(path=artifacts / "26-data-docs-page.png", full_page=True)
    finally:
        context.close()


def test_landing_sensor_tick_names_rejected_files(ui_backfill, browser, server, site, artifacts):
    rejected = write_faulty_files(site.landing)
    started = time.time()
    server.start_sensor("landing_sensor")
    deadline = time.monotonic() + 180
    while True:
        ticks = [t for t in latest_ticks(server, "landing_sensor") if t["timestamp"] >= started - 1]
        done = [t for t in ticks if t["status"] in ("SKIPPED", "SUCCESS", "FAILURE")]
        if done or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert done, ticks
    message = done[0]["skipReason"] or ""
    for path in rejected:
        assert path.name in message, message
    assert "slide_errors" in message  # (the truncated sample is made from a slide not kept here)
    context, page = new_page(browser)
    try:
        # The tick's message was read above through GraphQL (what this page shows); the page
        # is kept as a screenshot to look at.
        page.goto(f"{server.url}/locations/{server.location_name()}/sensors/landing_sensor")
        page.get_by_text("landing_sensor").first.wait_for()
        page.wait_for_timeout(3_000)
        page.screenshot(path=artifacts / "27-landing-sensor-tick.png", full_page=True)
    finally:
        context.close()
