"""UI page loads with 1,000 registered slide partitions (registered, never materialized)."""

from __future__ import annotations

import re
import time

import pytest

from pathgen_dagster.partitions import SLIDES_PARTITION
from tests.ui.conftest import new_page
from tests.ui.dagster_site import DagsterDev, build_site
from tests.ui.pages import dismiss_first_visit_dialogs, expand_all_groups, open_asset_graph

pytestmark = [pytest.mark.ui, pytest.mark.slow]

PARTITIONS = 1_000
BATCH = 250  # FACTS.md: add dynamic partitions in batches
# Generous ceilings: a page that takes longer than this is unusable, whatever the machine.
MAX_PAGE_SECONDS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser):
    site = build_site(tmp_path_factory.mktemp("ui-scale") / "site", register=False)
    keys = [f"scale-slide-{number:05d}" for number in range(PARTITIONS)]
    with site.instance() as instance:
        for start in range(0, PARTITIONS, BATCH):
            instance.add_dynamic_partitions(SLIDES_PARTITION, keys[start : start + BATCH])
        assert len(instance.get_dynamic_partitions(SLIDES_PARTITION)) == PARTITIONS
    with DagsterDev(site) as running:
        yield running


def test_pages_load_with_a_thousand_partitions(server, browser, artifacts, figures):
    context, page = new_page(browser)
    try:
        cold_graph_seconds = open_asset_graph(page, server.url)  # first page of a fresh browser
        dismiss_first_visit_dialogs(page)
        graph_seconds = open_asset_graph(page, server.url)  # again, with the page cached
        expand_all_groups(page)
        page.screenshot(path=artifacts / "10-graph-1000-partitions.png")

        started = time.perf_counter()
        page.goto(f"{server.url}/assets/tiles?view=partitions")
        page.get_by_text("1,000 Partitions Selected", exact=True).first.wait_for()
        page.get_by_text(re.compile(r"^Missing \(1,?000\)$")).first.wait_for()
        page.get_by_text("scale-slide-00000", exact=True).first.wait_for()
        partitions_seconds = time.perf_counter() - started
        page.screenshot(path=artifacts / "11-tiles-1000-partitions.png")

        started = time.perf_counter()
        page.goto(f"{server.url}/assets/tiles?view=partitions&partition=scale-slide-00999")
        page.get_by_text("scale-slide-00999", exact=True).first.wait_for()
        one_partition_seconds = time.perf_counter() - started
    finally:
        context.close()
    figures["partitions_registered"] = PARTITIONS
    figures["asset_graph_load_seconds_1000_partitions_cold"] = round(cold_graph_seconds, 2)
    figures["asset_graph_load_seconds_1000_partitions"] = round(graph_seconds, 2)
    figures["tiles_partitions_page_load_seconds_1000_partitions"] = round(partitions_seconds, 2)
    figures["tiles_one_partition_page_load_seconds_1000_partitions"] = round(one_partition_seconds, 2)
    assert cold_graph_seconds < MAX_PAGE_SECONDS and graph_seconds < MAX_PAGE_SECONDS
    assert partitions_seconds < MAX_PAGE_SECONDS
    assert one_partition_seconds < MAX_PAGE_SECONDS
