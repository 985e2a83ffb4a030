"""`pathgen` as a user meets it: instance set-up, run exit codes and summary, SQL errors,
and which PATHGEN_* value wins (the shell's, never the repo's .env)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pathgen_dagster.cli import PROJECT_DAGSTER_YAML, instance_config, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fresh" / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    return path


def test_register_without_dagster_home_says_what_to_do(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code = main(["--lakehouse", str(tmp_path / "lh"), "register", "--landing", str(tmp_path)])
    assert code == 2
    assert "export DAGSTER_HOME=$PWD/dagster_home" in capsys.readouterr().err


def test_run_exits_non_zero_and_prints_the_table(home: Path, tmp_path: Path, sample_landing: Path, capsys):
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copyfile(sample_landing / "CMU-1-Small-Region.svs", landing / "good.svs")
    shutil.copyfile(sample_landing / "synthetic-aperio-20x.svs", landing / "goes-bad.svs")
    lakehouse = str(tmp_path / "lakehouse")
    assert main(["--lakehouse", lakehouse, "register", "--landing", str(landing)]) == 0
    # A fresh clone: the instance folder was created with the project's dagster.yaml.
    assert (home / "dagster.yaml").read_text() == instance_config()
    assert "registered 2 new slide partitions" in capsys.readouterr().out
    # The file is cut after registration: that slide fails at `slides`, the other goes on.
    data = (landing / "goes-bad.svs").read_bytes()
    (landing / "goes-bad.svs").write_bytes(data[: len(data) // 4])
    os.environ["PATHGEN_LANDING"] = str(landing)
    try:
        argv = ["--lakehouse", lakehouse, "run", "--select", "key:slides or key:tiles"]
        os.environ["PATHGEN_LAKEHOUSE"] = lakehouse
        assert main(argv) == 1
        out = capsys.readouterr().out
        assert main([*argv, "--allow-failures"]) == 0
    finally:
        os.environ.pop("PATHGEN_LANDING")
        os.environ.pop("PATHGEN_LAKEHOUSE")
    assert "1 of 2 slides succeeded" in out
    assert "FAILED goes-bad" in out and "truncated" in out
    for column in ("slide", "status", "tiles", "patches", "pairs", "quarantined", "seconds"):
        assert column in out
    good_row = next(line for line in out.splitlines() if "│ good" in line)
    assert "ok" in good_row
    assert "WARNING good: 0 training pairs" in out  # only tiles ran: no pairs, flagged
    # Progress inside a slide, streamed from its process while it runs: stage, then counts.
    assert "good: tiles: started" in out
    assert re.search(r"good: tiles: [\d,]+ rows in [\d.]+s", out), out
    assert out.index("good: tiles: started") < out.index("good: ok")


def test_sql_with_a_wrong_column_prints_duckdbs_message_and_the_columns(
    tmp_path: Path, capsys, sample_landing: Path, instance
):
    from pathgen_dagster.lib.ingest.registry import record_slide_error
    from pathgen_dagster.resources.lakehouse import Lakehouse

    lakehouse = Lakehouse(root=str(tmp_path / "lh"))
    record_slide_error(lakehouse, "x", sample_landing / "manifest.csv", stage="registry", reason="r")
    code = main(["--lakehouse", lakehouse.root, "sql", "SELECT no_such_column FROM slide_errors"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Binder Error" in err and "no_such_column" in err
    assert "columns of slide_errors: slide_id, uri, file_size, stage, reason, detected_at" in err
    assert "Traceback" not in err


def test_shell_pathgen_variables_win_over_the_repo_env(tmp_path: Path, monkeypatch):
    """`dagster dev` in the repo folder loads .env over the shell; make exports with ?=."""
    from dagster._cli.utils import _inject_local_env_file

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATHGEN_LANDING", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PATHGEN_LAKEHOUSE", str(tmp_path / "lakehouse-elsewhere"))
    import logging

    with _inject_local_env_file(logging.getLogger("test")):
        assert os.environ["PATHGEN_LANDING"] == str(tmp_path / "elsewhere")
        assert os.environ["PATHGEN_LAKEHOUSE"] == str(tmp_path / "lakehouse-elsewhere")
        assert os.environ["HF_HUB_OFFLINE"] == "1"  # .env is still read
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    printed = subprocess.run(
        ["make", "-s", "print-env"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"PATHGEN_LANDING={tmp_path / 'elsewhere'}" in printed
    env.pop("PATHGEN_LANDING")
    printed = subprocess.run(
        ["make", "-s", "print-env"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"PATHGEN_LANDING={REPO / 'landing'}" in printed


def test_a_new_instance_runs_as_many_slides_at_once_as_the_profile(tmp_path: Path):
    import dagster as dg

    from pathgen_dagster.cli import ensure_dagster_home
    from pathgen_dagster.profiles import machine_profile

    home = ensure_dagster_home({"DAGSTER_HOME": str(tmp_path / "home")})
    written = (home / "dagster.yaml").read_text()
    # Only the runs limit differs from the project's file.
    shipped = PROJECT_DAGSTER_YAML.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, written.splitlines(), strict=True) if a != b]
    assert [a.split(":")[0].strip() for a, _ in changed] == ["max_concurrent_runs"], changed
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    assert runs == machine_profile().slides_at_once
