"""Markers and artefacts of the instance tests (daemon, PostgreSQL)."""

from pathlib import Path

import pytest

from tests.ui.dagster_site import ROOT, teardown_on_sigterm


def pytest_configure(config: pytest.Config) -> None:
    teardown_on_sigterm()
    config.addinivalue_line(
        "markers", "daemon: starts `dagster dev` (webserver + daemon) and runs the pipeline"
    )
    config.addinivalue_line("markers", "postgres: needs PATHGEN_PG_URL (scripts/postgres/start.sh prints it)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Daemon tests take minutes: they run when asked for (`-m daemon`), else skip saying so."""
    if "daemon" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="daemon stage: run with `-m daemon` (make test-instance)")
    for item in items:
        if item.get_closest_marker("daemon"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """artifacts/instance/ (git-ignored): measured figures of the daemon tests."""
    path = ROOT / "artifacts" / "instance"
    path.mkdir(parents=True, exist_ok=True)
    return path
