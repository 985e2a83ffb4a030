"""The second nucleus detector (issue 10, items 6 and 7): validated on the labelled set, and
used by the revise agent to withdraw claims the two detectors disagree on.

Real H&E only: the 64 labelled calibration crops (tests/data/calibration).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.agents import AGENTS, PatchInput, withdraw_disputed
from pathgen_dagster.lib.captions.edit_log import parse_revision
from pathgen_dagster.lib.quality import calibration, evidence, fidelity
from pathgen_dagster.lib.selection.facts import without_scale


@pytest.fixture(scope="module")
def report() -> dict:
    return evidence.calibration_report()


@pytest.fixture(scope="module")
def measured() -> list[tuple[calibration.Crop, object, evidence.Evidence]]:
    return [
        (crop, facts, evidence.measure(crop.rgb, facts))
        for crop, facts in zip(calibration.load(), calibration.measured(), strict=True)
    ]


def test_the_second_detector_agrees_with_the_labels(report: dict) -> None:
    assert report["count_mae"] <= 3.2
    assert report["count_corr"] >= 0.65
    assert report["cellularity_agreement"] >= 0.72
    assert report["cellularity_agreement_holdout"] >= 0.70


def test_agreement_of_the_two_detectors_means_something(report: dict) -> None:
    # The reason disputed claims are withdrawn: where the detectors disagree, the band the
    # caption was written from is right only about half the time.
    assert report["log_accuracy_where_detectors_agree"] >= 0.85
    assert report["log_accuracy_where_they_disagree"] <= 0.6
    assert 0.6 <= report["band_agreement_with_log"] <= 0.9


def test_the_shipped_edges_are_the_fitted_ones(report: dict) -> None:
    for shipped, fitted in zip(
        evidence.CELLULARITY_EDGES_PER_MM2, report["cellularity_edges_per_mm2"], strict=True
    ):
        assert shipped == pytest.approx(fitted, rel=0.02)


def test_unknown_scale_gives_no_evidence_and_no_dispute(measured) -> None:
    crop, facts, _ = measured[0]
    found = evidence.measure(crop.rgb, without_scale(facts))
    assert found.cellularity == "unknown" and math.isnan(found.nuclei_density_per_mm2)
    assert found.disputed == ()
    assert evidence.Evidence.from_json(found.to_json()).cellularity == "unknown"


def _disputed(measured):
    return [(c, f, e) for c, f, e in measured if e.disputed]


def test_the_grounded_revision_withdraws_disputed_claims(measured) -> None:
    disputed = _disputed(measured)
    assert disputed, "no crop where the detectors disagree: the test would prove nothing"
    for crop, facts, found in disputed:
        draft = verbalize.describe(facts, tissue_site=None, seed=crop.name)
        item = PatchInput(crop.name, facts, previous=draft, evidence=found)
        revised, edits = AGENTS["revision"].grounded(item)
        assert edits, f"{crop.name}: disputed cellularity but no edit"
        assert all("not confirmed by independent evidence" in e["reason"] for e in edits)
        # The log is valid against the draft, and what it says is what was done.
        parse_revision(json.dumps({"revised": revised, "edits": list(edits)}), draft=draft)
        assert fidelity.edit_log_error(draft, revised, json.dumps(list(edits))) is None
        assert not evidence.claim_disagreements(revised, found)
        # Nothing else the draft measured is lost, and the text still reads as the facts.
        assert not verbalize.contradictions(revised, facts)
        caption = verbalize.summarize(revised, facts, seed=crop.name)
        assert not evidence.claim_disagreements(caption, found)


def test_without_dispute_the_revision_keeps_the_draft(measured) -> None:
    crop, facts, found = next((c, f, e) for c, f, e in measured if not e.disputed)
    draft = verbalize.describe(facts, tissue_site=None, seed=crop.name)
    revised, edits = AGENTS["revision"].grounded(
        PatchInput(crop.name, facts, previous=draft, evidence=found)
    )
    assert (revised, edits) == (draft, ())


def test_a_sentence_an_earlier_edit_wrote_is_corrected_inside_that_edit(measured) -> None:
    crop, facts, found = _disputed(measured)[0]
    sentence = verbalize.describe(facts, tissue_site=None, seed=crop.name)
    cellular = next(s for s in verbalize.split_sentences(sentence) if any(
        c.claim == "cellularity" for c in verbalize.read_claims(s)
    ))
    draft = "The field shows tissue."
    added = {"op": "add", "span": "", "replacement": cellular, "reason": "salient"}
    revised, edits = withdraw_disputed(draft, f"{draft} {cellular}", [added], found)
    assert (revised, edits) == (draft, [])  # the add is withdrawn, not deleted afterwards
    parse_revision(json.dumps({"revised": revised, "edits": edits}), draft=draft)


def test_the_model_revision_prompt_says_what_is_not_confirmed(measured) -> None:
    crop, facts, found = _disputed(measured)[0]
    item = PatchInput(crop.name, facts, previous="A draft.", evidence=found)
    values = AGENTS["revision"].values(item, None, None)
    assert "cellularity is NOT confirmed" in values["facts"]
    calm = dataclasses.replace(item, evidence=None)
    assert "NOT confirmed" not in AGENTS["revision"].values(calm, None, None)["facts"]
