"""The team instance (deploy/dagster-team.yaml) with every record in a real PostgreSQL.

Runs when PATHGEN_PG_URL points at a PostgreSQL server whose user may create databases
(`eval "$(scripts/postgres/start.sh)"` starts one; `.ci/run` does). Each test session makes
its own database there and drops it afterwards, so runs never see each other's records.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.profiles import machine_profile
from pathgen_dagster.runner import run_slides
from pathgen_dagster.sensors import register_landing
from tests.ui.dagster_site import ROOT, VENV_BIN, Site

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("PATHGEN_PG_URL"),
        reason="PATHGEN_PG_URL is not set: start a server with "
        '`eval "$(scripts/postgres/start.sh)"` (make test-instance does) to run this test',
    ),
]

SLIDE = "CMU-1-Small-Region"


@pytest.fixture(scope="module")
def pg_database() -> dict[str, str]:
    """A fresh database on the PATHGEN_PG_URL server; the PATHGEN_PG_* variables for it."""
    import psycopg2

    url = urlparse(os.environ["PATHGEN_PG_URL"])
    name = f"pathgen_test_{secrets.token_hex(4)}"
    admin = psycopg2.connect(os.environ["PATHGEN_PG_URL"])
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "PATHGEN_PG_HOST": url.hostname or "127.0.0.1",
            "PATHGEN_PG_PORT": str(url.port or 5432),
            "PATHGEN_PG_USER": url.username or "",
            "PATHGEN_PG_PASSWORD": url.password or "",
            "PATHGEN_PG_DB": name,
        }
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def team_site(tmp_path_factory, sample_landing: Path, pg_database) -> Site:
    site = Site(root=tmp_path_factory.mktemp("team") / "site", extra_env=pg_database)
    shutil.copytree(sample_landing, site.landing)
    site.dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster-team.yaml", site.dagster_home / "dagster.yaml")
    return site


@pytest.fixture
def team_instance(team_site: Site, monkeypatch) -> dg.DagsterInstance:
    for key, value in team_site.extra_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(team_site.dagster_home))
    monkeypatch.setenv("PATHGEN_LAKEHOUSE", str(team_site.lakehouse))
    monkeypatch.setenv("PATHGEN_LANDING", str(team_site.landing))
    with dg.DagsterInstance.get() as instance:
        yield instance


def query(pg_database: dict[str, str], sql: str, *params) -> list[tuple]:
    """Rows straight from PostgreSQL, bypassing Dagster."""
    import psycopg2

    with (
        psycopg2.connect(
            host=pg_database["PATHGEN_PG_HOST"],
            port=pg_database["PATHGEN_PG_PORT"],
            user=pg_database["PATHGEN_PG_USER"],
            password=pg_database["PATHGEN_PG_PASSWORD"],
            dbname=pg_database["PATHGEN_PG_DB"],
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params)
        return cursor.fetchall()


def test_team_instance_stores_runs_partitions_and_pools_in_postgres(
    team_site: Site, team_instance: dg.DagsterInstance, pg_database
):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(team_instance.run_storage, PostgresRunStorage)
    assert isinstance(team_instance.event_log_storage, PostgresEventLogStorage)
    # The shipped pool limits, set with the same script and CLI a team would use.
    team_site.run(ROOT / "deploy" / "set_pools.sh", env={"DAGSTER": str(VENV_BIN / "dagster")})
    limits = dict(query(pg_database, 'SELECT concurrency_key, "limit" FROM concurrency_limits'))
    assert limits == machine_profile().pool_limits()

    from pathgen_dagster.resources.lakehouse import Lakehouse

    lakehouse = Lakehouse(root=str(team_site.lakehouse))
    added, _ = register_landing(team_instance, lakehouse, team_site.landing)
    assert SLIDE in added
    [outcome] = run_slides(team_instance, [SLIDE], selection="key:slides or key:tiles")
    assert outcome.success, outcome.error

    stored = query(
        pg_database,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
        SLIDES_PARTITION,
    )
    assert SLIDE in {row[0] for row in stored}
    [(status,)] = query(pg_database, "SELECT status FROM runs WHERE run_id = %s", outcome.run_id)
    assert status == "SUCCESS"
    materialized = query(
        pg_database,
        "SELECT asset_key, partition FROM event_logs WHERE run_id = %s "
        "AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        outcome.run_id,
    )
    assert sorted(materialized) == [('["slides"]', SLIDE), ('["tiles"]', SLIDE)]
    # And Dagster reads them back from there.
    assert team_instance.get_materialized_partitions(dg.AssetKey("tiles")) == {SLIDE}
    assert not lakehouse.read("tiles", slide_id=SLIDE).is_empty()


def test_dagster_cli_reads_the_team_instance(team_site: Site, team_instance, pg_database):
    info = team_site.run(VENV_BIN / "dagster", "instance", "info")
    assert "PostgresRunStorage" in info and "PostgresEventLogStorage" in info
    assert pg_database["PATHGEN_PG_PASSWORD"] not in info or not pg_database["PATHGEN_PG_PASSWORD"]
