"""Markers and artefacts of the instance tests (daemon, PostgreSQL)."""

from pathlib import Path

import pytest

from tests.ui.dagster_site import ROOT


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon: starts `dagster dev` (webserver + daemon) and runs the pipeline"
    )
    config.addinivalue_line("markers", "postgres: needs PATHGEN_PG_URL (scripts/postgres/start.sh prints it)")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """artifacts/instance/ (git-ignored): measured figures of the daemon tests."""
    path = ROOT / "artifacts" / "instance"
    path.mkdir(parents=True, exist_ok=True)
    return path
