"""A local Ray cluster, the moto S3 server and a PostgreSQL instance for the Ray stage.

`make test-ray` builds .venv-ray (the lock + the `ray` extra) and .venv-moto, starts a
throwaway PostgreSQL (scripts/postgres/with_postgres.sh) and runs these tests with `-m ray`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from scripts.ray.local_cluster import LocalRayCluster
from tests.s3.conftest import S3Server, s3_server  # noqa: F401 (the moto server fixture)
from tests.ui.dagster_site import ROOT, teardown_on_sigterm

# The worker nodes' own secrets: in their environment, never in a Ray job's runtime_env.
NODE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PATHGEN_PG_PASSWORD")
PG_VARS = ("PATHGEN_PG_HOST", "PATHGEN_PG_PORT", "PATHGEN_PG_USER", "PATHGEN_PG_PASSWORD", "PATHGEN_PG_DB")


def pytest_configure(config: pytest.Config) -> None:
    teardown_on_sigterm()  # SIGTERM unwinds fixtures: the cluster is killed, not left behind
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (make test-ray)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "ray" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="Ray stage: run with `make test-ray`")
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_env() -> dict[str, str]:
    """The PATHGEN_PG_* variables of the throwaway PostgreSQL `make test-ray` started."""
    missing = [name for name in PG_VARS if not os.environ.get(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run these tests with `make test-ray`")
    return {name: os.environ[name] for name in PG_VARS}


def node_base_env() -> dict[str, str]:
    """What every Ray node starts with: this machine's environment without any PathGen place,
    instance or credential (those reach a job through the launcher's env_vars or the worker
    node's own environment), and this venv's bin first on PATH."""
    dropped = ("PATHGEN_", "AWS_", "DAGSTER_HOME")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)  # the checked-out code, as the code server imports it
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def ray_cluster(s3_server: S3Server, pg_env: dict[str, str]):  # noqa: F811
    """Head (0 CPUs) + 2 worker nodes (2 logical CPUs each: one slide's run each)."""
    secrets = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "PATHGEN_PG_PASSWORD": pg_env["PATHGEN_PG_PASSWORD"],
    }
    cluster = LocalRayCluster(workers=2, worker_cpus=2, env=node_base_env(), worker_env=secrets)
    with cluster:
        yield cluster
