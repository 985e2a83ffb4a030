"""The whole chain for the sample slides with the lakehouse on S3 (moto server process).

What a user types, in subprocesses: ``PATHGEN_LAKEHOUSE=s3://...`` plus the endpoint and
credentials in the environment, then ``pathgen register / run / export / sql / lineage``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pathgen_dagster.lib.ingest.samples import write_faulty_files

pytestmark = [pytest.mark.s3, pytest.mark.slow]

# (llm_responses, the response cache, is only written by model backends, not by the default
# grounded one run here: test_s3_lakehouse appends to it on S3.)
TABLES = (
    "slides",
    "slide_errors",
    "tiles",
    "patch_embeddings",
    "patches",
    "descriptions",
    "revised_descriptions",
    "captions",
    "caption_quality",
    "training_pairs",
)


def pathgen(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pathgen")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=env["DAGSTER_HOME"],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"pathgen {' '.join(args)} failed:\n{output[-4000:]}"
    return output


def test_whole_chain_on_s3_then_sql_and_lineage(s3_server, sample_landing, landing, tmp_path):
    write_faulty_files(landing)  # unreadable files: registration records them in slide_errors
    root = "s3://lake2/pathgen"
    env = {
        **os.environ,
        **s3_server.env(root),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "PATHGEN_LANDING": str(landing),
        "OMP_NUM_THREADS": "1",
    }
    Path(env["DAGSTER_HOME"]).mkdir()
    outputs = [pathgen(env, "register")]
    outputs.append(pathgen(env, "run", "--strict"))
    outputs.append(pathgen(env, "export"))
    keys = s3_server.list_keys("lake2", "pathgen/")
    for table in TABLES:
        assert any(key.startswith(f"pathgen/{table}/_delta_log/") for key in keys), table
    slides = sorted(p.stem for p in sample_landing.iterdir() if p.suffix in (".svs", ".tiff", ".tif"))
    for slide in slides:
        assert f"pathgen/_artifacts/tiles/{slide}.png" in keys
        assert f"pathgen/_artifacts/patches/{slide}.png" in keys
    assert "pathgen/_quality/data_docs/index.html" in keys
    assert any(key.startswith("pathgen/exports/") and key.endswith("manifest.json") for key in keys)
    # Nothing was written to a local ./lakehouse or the landing zone.
    assert not (tmp_path / "lakehouse").exists()
    # SQL over the object store (delta + httpfs, S3 secret from the same settings).
    counts = pathgen(
        env, "sql", "SELECT slide_id, count(*) AS captions FROM captions GROUP BY 1 ORDER BY 1"
    )
    outputs.append(counts)
    for slide in slides:
        assert slide in counts
    pairs = pathgen(env, "sql", "SELECT count(*) AS pairs FROM training_pairs")
    outputs.append(pairs)
    assert int(re.findall(r"│\s*(\d+)\s*│", pairs)[0]) > 0, pairs
    lineage = pathgen(env, "lineage")
    outputs.append(lineage)
    for stage in ("slide file", "tile", "patch", "description", "revision", "caption", "checks"):
        assert f". {stage}" in lineage
    assert "no longer readable" not in lineage
    # The credentials are never printed.
    for output in outputs:
        assert s3_server.secret_access_key not in output
