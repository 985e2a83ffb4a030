"""Browser fixtures: Debian's Chromium driven by Playwright's Python package (no downloads)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui.dagster_site import ROOT, teardown_on_sigterm

CHROMIUM = Path(os.environ.get("PATHGEN_CHROMIUM", "/usr/bin/chromium"))
# FACTS.md: the flags that let Debian's Chromium run headless as root in a container.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts" / "ui"
VIEWPORT = {"width": 1600, "height": 1000}


def pytest_configure(config: pytest.Config) -> None:
    teardown_on_sigterm()
    config.addinivalue_line("markers", "ui: drives the Dagster UI in Debian's Chromium (make test-ui)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests take minutes: they run when asked for (`-m ui`), else skip saying so."""
    if "ui" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="browser stage: run with `-m ui` (make test-ui)")
    for item in items:
        if item.get_closest_marker("ui"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """artifacts/ui/ (git-ignored): screenshots and figures.json of the measured times."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def figures(artifacts: Path) -> Iterator[dict]:
    """Measured times, written to artifacts/ui/figures.json when the session ends."""
    path = artifacts / "figures.json"
    measured: dict = {}
    yield measured
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **measured}, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium; skipped (with the reason) where it is not installed.

    `make test-ui` installs Debian's `chromium` first and sets PATHGEN_UI_REQUIRED=1, so
    there a missing browser fails instead of skipping.
    """
    if not CHROMIUM.exists():
        reason = (
            f"no Chromium at {CHROMIUM}: `make test-ui` installs Debian's chromium package "
            "(apt-get install -y chromium) and runs these tests"
        )
        if os.environ.get("PATHGEN_UI_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser):
    """A fresh browser context (no cookies, no local storage) and its page."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    return context, context.new_page()
