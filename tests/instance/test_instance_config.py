"""The shipped instance configurations load, agree with each other, and set the pools."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pathgen_dagster.profiles import machine_profile
from tests.ui.dagster_site import ROOT, VENV_BIN, Site

ONE_PERSON = ROOT / "dagster.yaml"
TEAM = ROOT / "deploy" / "dagster-team.yaml"
# set_pools.sh applies this machine's profile (pathgen_dagster/profiles.py).
SHIPPED_POOL_LIMITS = machine_profile().pool_limits()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ONE_PERSON, home / "dagster.yaml")
    return home


def test_one_person_instance_queues_runs_retries_crashes_and_caps_pools(home: Path):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 3
        assert config.pool_config.default_pool_limit == 1
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled
        # A pool nobody configured (a future model server) starts at the default limit.
        instance.event_log_storage.initialize_concurrency_limit_to_default("new_model_server")
        assert instance.event_log_storage.get_concurrency_info("new_model_server").slot_count == 1


def test_set_pools_script_sets_the_profiles_limits(home: Path, tmp_path: Path):
    site = Site(root=tmp_path)
    site.run(ROOT / "deploy" / "set_pools.sh", env={"DAGSTER": str(VENV_BIN / "dagster")})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limits = {
            pool: instance.event_log_storage.get_concurrency_info(pool).slot_count
            for pool in SHIPPED_POOL_LIMITS
        }
    assert limits == SHIPPED_POOL_LIMITS


def test_team_config_is_the_one_person_config_on_postgres(monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    for name in ("HOST", "PORT", "USER", "PASSWORD", "DB"):
        monkeypatch.setenv(f"PATHGEN_PG_{name}", "5432" if name == "PORT" else "x")
    # Validates the file against Dagster's instance schema (env sources left unresolved).
    config, _ = dagster_instance_config(str(TEAM.parent), TEAM.name)
    database = config["storage"]["postgres"]["postgres_db"]
    assert database["port"] == {"env": "PATHGEN_PG_PORT"}
    assert database["scheme"] == "postgresql+psycopg2"
    team = yaml.safe_load(TEAM.read_text())
    one_person = yaml.safe_load(ONE_PERSON.read_text())
    assert set(team) - set(one_person) == {"storage"}
    assert {key: team[key] for key in one_person} == one_person


@pytest.mark.parametrize("pool", sorted(SHIPPED_POOL_LIMITS))
def test_every_configured_pool_guards_an_asset(pool: str, monkeypatch):
    from pathgen_dagster.definitions import defs
    from pathgen_dagster.resources.llm import BACKEND_ENV, SERVED_BACKENDS, agent_pool, configured_backend

    graph = defs().get_repository_def().asset_graph
    used = {name for key in graph.get_all_asset_keys() for name in graph.get(key).pools or ()}
    if pool == "llm" and configured_backend() not in SERVED_BACKENDS:
        # The grounded agents are CPU work (`cpu`); with a model server they take `llm`.
        monkeypatch.setenv(BACKEND_ENV, "vllm")
        used.add(agent_pool())
    assert pool in used, f"no asset uses pool {pool!r}: its limit in deploy/set_pools.sh guards nothing"
