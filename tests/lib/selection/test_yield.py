"""Selection keeps dozens of patches over three tissues on a 264-tile slide (issue 10, item 5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_selection_yield.py"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    spec = importlib.util.spec_from_file_location("bench_selection_yield", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run((MorphologyEncoder.dedup_threshold, 0.999))


def test_the_declared_threshold_keeps_dozens_over_all_three_tissues(rows: list[dict]) -> None:
    declared = rows[0]
    assert declared["tiles"] >= 250
    assert declared["kept"] >= 36
    assert set(declared["per_tissue"]) == {"epidermis", "dermis", "carcinoma"}
    assert min(declared["per_tissue"].values()) >= 10
    assert declared["fields_covered"] >= 0.8 * declared["fields"]


def test_the_declared_threshold_removes_copies(rows: list[dict]) -> None:
    declared, almost_none = rows
    # With dedup all but off, copies of one field (flips, shifts, JPEG) are kept side by side.
    assert almost_none["groups_kept_twice_or_more"] > 1.5 * declared["groups_kept_twice_or_more"]
    assert declared["kept"] < almost_none["kept"]
