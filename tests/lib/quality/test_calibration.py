"""Measurements against ground truth made by looking (tests/data/calibration, issue 10 item 1).

Fails when a change to the detector, the stain measures or the band edges makes them agree
less with the labels; the figures are those printed by
``python -m pathgen_dagster.lib.quality.calibration``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pathgen_dagster.lib.quality import calibration
from pathgen_dagster.lib.selection.facts import CELLULARITY_EDGES_PER_MM2, STROMA_EDGES


@pytest.fixture(scope="module")
def report() -> dict:
    return calibration.report()


def test_the_set_is_large_and_varied() -> None:
    crops = calibration.load()
    assert len(crops) >= 60
    assert {c.source for c in crops} == {"cmu", "target"}
    assert len(calibration.load_fields()) >= 40
    tissues = Counter(c.tissue for c in crops)
    assert all(tissues[t] >= 4 for t in ("epidermis", "dermis", "carcinoma", "keratin"))
    assert set(Counter(c.cellularity for c in crops)) == set(calibration.CELLULARITY)
    assert set(Counter(c.stroma for c in crops)) == set(calibration.STROMA)


def test_the_log_detector_counts_better_than_the_threshold_detector(report: dict) -> None:
    assert report["count_mae_after"] <= 3.0
    assert report["count_mae_after_holdout"] <= 3.0
    assert report["count_mae_after"] < report["count_mae_before"]
    assert report["count_corr_after"] >= 0.7


def test_bands_agree_with_the_labels(report: dict) -> None:
    assert report["cellularity_agreement_after"] >= 0.72
    assert report["cellularity_agreement_after_holdout"] >= 0.72
    assert report["cellularity_agreement_after"] > report["cellularity_agreement_before"]
    assert report["stroma_agreement_after"] >= 0.72
    assert report["stroma_agreement_after_holdout"] >= 0.65


def test_the_shipped_edges_are_the_fitted_ones(report: dict) -> None:
    # Refit (python -m pathgen_dagster.lib.quality.calibration) and copy the edges into
    # morphology.py whenever the measurements change.
    for shipped, fitted in zip(CELLULARITY_EDGES_PER_MM2, report["cellularity_edges_per_mm2"], strict=True):
        assert shipped == pytest.approx(fitted, rel=0.05)
    for shipped, fitted in zip(STROMA_EDGES, report["stroma_edges"], strict=True):
        assert shipped == pytest.approx(fitted, abs=0.01)


def test_findings_detectors_meet_the_bar_exactly_where_the_registry_says() -> None:
    from pathgen_dagster.lib.selection import findings

    found = calibration.findings_report()
    assert {name for name, entry in found.items() if entry["passed"]} == findings.VALIDATED
    for name in findings.VALIDATED:
        entry = found[name]
        assert entry["positives"] >= findings.VALIDATION_BAR.min_positives
        assert entry["precision"] >= findings.VALIDATION_BAR.min_precision
        assert entry["recall"] >= findings.VALIDATION_BAR.min_recall
    for entry in found.values():  # shipped thresholds are the fitted ones
        if "threshold_fitted" in entry:
            assert entry["threshold_shipped"] == pytest.approx(entry["threshold_fitted"], rel=0.05)


def test_bands_that_assert_a_finding_are_worded_only_where_they_meet_the_bar() -> None:
    from pathgen_dagster.lib.captions import verbalize
    from pathgen_dagster.lib.selection import findings

    found = calibration.band_findings_report()
    assert set(found) == set(findings.BAND_FINDINGS)
    assert {band for band, entry in found.items() if entry["passed"]} == findings.VALIDATED_BANDS
    # The infiltrate band calls "possible" where most labelled fields show no lymphocyte
    # cluster: it must stay unworded until a detector passes.
    assert found["inflammation_hint"]["precision"] < findings.VALIDATION_BAR.min_precision
    facts = calibration.measured_fields()
    for f in facts:
        text = verbalize.describe(f, tissue_site=None, seed="b")
        text += " " + verbalize.summarize(text, f, seed="b")
        assert all(c.claim not in findings.UNVALIDATED_BANDS for c in verbalize.read_claims(text)), text
