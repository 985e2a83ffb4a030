"""What the tests do on Dagster's pages, one function per gesture (Playwright, sync API)."""

from __future__ import annotations

import re
import time


def dismiss_first_visit_dialogs(page) -> None:
    """Close Dagster's "Join the Dagster community" dialog if it is shown (first visit)."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=4_000)
    except Exception:  # not shown: the instance already recorded a dismissal
        return
    skip.click()
    skip.wait_for(state="hidden")


def wait_until_loaded(page, timeout_ms: int = 120_000) -> None:
    """Wait until no "Loading..." placeholder is left on the page (the data has arrived)."""
    page.wait_for_function("() => !/Loading(\\.\\.\\.|…)/.test(document.body.innerText)", timeout=timeout_ms)


def open_asset_graph(page, base_url: str) -> float:
    """Open the global asset lineage; seconds until the graph is drawn with its data."""
    started = time.perf_counter()
    page.goto(f"{base_url}/asset-groups")
    page.get_by_role("button", name=re.compile(r"Materialize all")).wait_for()
    page.locator("svg").first.wait_for()
    wait_until_loaded(page)
    return time.perf_counter() - started


def expand_all_groups(page) -> None:
    """Right-click the graph background > "Expand all groups" (groups start collapsed)."""
    viewport = page.viewport_size
    page.mouse.click(viewport["width"] * 0.6, viewport["height"] * 0.85, button="right")
    item = page.get_by_role("menuitem", name=re.compile(r"Expand all groups"))
    try:
        item.wait_for(timeout=5_000)
    except Exception:  # one group only: the graph is already expanded, nothing to do
        page.keyboard.press("Escape")
        return
    item.click()


def backfill_row(page, asset_name: str) -> str:
    """Text of the backfill page's row for one asset: progress, targeted, in progress, ..."""
    rows = page.locator("[class*='VirtualizedTable_row']")
    return rows.filter(has=page.get_by_text(asset_name, exact=True)).first.inner_text()


def succeeded_count(row_text: str) -> int | None:
    """Partitions succeeded in a backfill row (None for an unpartitioned asset's row)."""
    cells = [cell.strip() for cell in row_text.split("\n") if cell.strip()]
    numbers = [cell for cell in cells if re.fullmatch(r"\d+", cell)]
    return int(numbers[2]) if len(numbers) >= 4 else None
