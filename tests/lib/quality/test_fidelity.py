"""Caption-fidelity rules: for every rule, crafted captions that pass and captions that fail.

Real components throughout: the packaged lexicon, the real CLIP BPE tokenizer (the 77 vs
78 token captions are built with it), the packaged MiniLM sentence encoder, the real
screening rules and verbalizer. Facts are MorphologyFacts with hand-set measurements whose
bands are read from the real band table, so each grounding case states what was measured.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pathgen_dagster.lib.captions.tokenizer import CLIP_CONTEXT_LENGTH, get_tokenizer
from pathgen_dagster.lib.quality import fidelity
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.quality.fidelity import (
    DEFAULT_CONFIG,
    RULE_NAMES,
    RULES,
    SEVERE_RULES,
    FidelityConfig,
    ReferenceCaptions,
    SlideInputs,
    caption_key,
    gate_slide,
    grounding_contradictions,
    judge,
    measure,
    measure_slide,
    pass_rates,
    ruleset_version,
)
from pathgen_dagster.lib.quality.lexicon import get_lexicon
from pathgen_dagster.lib.selection.facts import BANDS, MorphologyFacts
from pathgen_dagster.lib.selection.text_encoder import SentenceEncoder

# A lymphocyte-poor, low-cellularity patch of loose stroma: what was measured.
LOW_CELLULARITY = {
    "mpp_um": 0.5,
    "field_width_um": 336.0,
    "tissue_fraction": 0.85,
    "white_fraction": 0.15,
    "eosin_fraction": 0.70,
    "haematoxylin_fraction": 0.30,
    "haematoxylin_od_mean": 0.35,
    "haematoxylin_od_std": 0.12,
    "haematoxylin_od_p10": 0.20,
    "haematoxylin_od_p50": 0.33,
    "haematoxylin_od_p90": 0.52,
    "eosin_od_mean": 0.30,
    "eosin_od_std": 0.08,
    "eosin_od_p10": 0.20,
    "eosin_od_p50": 0.30,
    "eosin_od_p90": 0.40,
    "nuclei_count": 60,
    "nuclei_density_per_mm2": 700.0,
    "nuclear_area_mean_um2": 35.0,
    "nuclear_area_std_um2": 12.0,
    "nuclear_area_cv": 0.34,
    "nuclear_area_log_sd": 0.30,
    "nuclear_eccentricity_mean": 0.70,
    "nuclear_haematoxylin_od_mean": 0.60,
    "nuclear_fraction": 0.06,
    "nc_ratio_proxy": 0.07,
    "lymphoid_fraction": 0.05,
    "lymphoid_density_per_mm2": 35.0,
    "nuclei_count_log": 60,
    "nuclei_density_log_per_mm2": 700.0,
    "gradient_mean": 0.05,
    "gradient_std": 0.04,
    "orientation_coherence": 0.55,
    "bandpass_energy_fine": 0.01,
    "bandpass_energy_medium": 0.01,
    "bandpass_energy_coarse": 0.01,
}
# A densely cellular patch full of small round dark (lymphocyte-like) nuclei.
HIGH_CELLULARITY = LOW_CELLULARITY | {
    "eosin_fraction": 0.20,
    "haematoxylin_fraction": 0.80,
    "nuclei_count": 400,
    "nuclei_density_per_mm2": 5200.0,
    "nuclei_count_log": 600,
    "nuclei_density_log_per_mm2": 9000.0,
    "nuclear_fraction": 0.32,
    "lymphoid_fraction": 0.45,
    "lymphoid_density_per_mm2": 2300.0,
}

# Low cellularity, yet many of its few nuclei are lymphocyte-like.


def make_facts(measurements: dict) -> MorphologyFacts:
    """Facts from measurements, every band read from the real band table."""
    bands = {name: band.label(measurements[band.measure]) for name, band in BANDS.items()}
    return MorphologyFacts(**measurements, **bands)


LOW = make_facts(LOW_CELLULARITY)
HIGH = make_facts(HIGH_CELLULARITY)

DRAFT = (
    "The patch shows loose fibrous stroma with collagen bundles, scattered small lymphocytes "
    "and a few fibroblasts with spindle-shaped nuclei. The cells have small uniform nuclei. "
    "Necrosis is seen."
)
REVISED = (
    "The patch shows loose fibrous stroma with collagen bundles, scattered small lymphocytes "
    "and a few fibroblasts with spindle-shaped nuclei. The cells have small uniform nuclei. "
    "No necrosis is seen."
)
EDITS = [
    {
        "op": "modify",
        "span": "Necrosis is seen.",
        "replacement": "No necrosis is seen.",
        "reason": "no measurement supports necrosis",
    }
]
GOOD = "Loose fibrous stroma with scattered small lymphocytes and small uniform nuclei."


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def results(
    caption: str | None = GOOD,
    *,
    revised: str | None = REVISED,
    draft: str | None = DRAFT,
    edits: object = EDITS,
    facts: MorphologyFacts | None = LOW,
    alignment: float | None = 0.6,
    mode: str = "minilm_facts",
    duplicate: fidelity.DuplicateMatch | None = None,
    evidence: Evidence | None = None,
    config: FidelityConfig = DEFAULT_CONFIG,
) -> fidelity.Judgement:
    """Judge one caption measured against a revision row and facts."""
    revision = {
        "draft": draft,
        "revised": revised,
        "edits_json": edits if isinstance(edits, str) or edits is None else json.dumps(edits),
    }
    measures = measure(
        {"patch_id": "slide_x1_y1_s672", "caption": caption},
        revision,
        facts,
        alignment_score=alignment,
        alignment_mode=mode,  # type: ignore[arg-type]
        duplicate=duplicate,
        evidence=evidence,
    )
    return judge(measures, config)


def caption_of_tokens(n: int) -> str:
    """A fluent caption of exactly ``n`` CLIP tokens (start and end included)."""
    tokenizer = get_tokenizer()
    phrases = [
        "Loose fibrous stroma",
        "with scattered small lymphocytes",
        "and a few spindle-shaped fibroblasts",
        "between thin collagen bundles",
        "surrounding small uniform nuclei",
        "near delicate capillaries",
        "within pale oedematous connective tissue",
        "beside occasional plasma cells",
        "along a thin vessel wall",
        "under a smooth layer",
        "of flattened lining cells",
        "with rare mast cells",
        "and wavy elastic fibres",
        "while the surrounding matrix",
        "looks pale and loose",
        "with a few small vessels",
        "lined by flat endothelial cells",
        "and no atypical cells",
        "in the whole field",
    ]
    words: list[str] = []
    for phrase in phrases:
        for word in phrase.split():
            words.append(word)
            text = " ".join(words) + "."
            if tokenizer.count(text) == n:
                return text
            assert tokenizer.count(text) < n, f"overshot {n} tokens with {word!r}"
    raise AssertionError(f"phrases too short for {n} tokens")


# --- every rule: captions that pass and captions that fail -------------------------------

LONG_DESCRIPTION = " ".join(["Loose fibrous stroma with scattered small lymphocytes."] * 40)
REWRITTEN = "Sheets of atypical epithelial cells with large nuclei and no necrosis."
CASES: list[tuple[str, str, dict, bool]] = [
    # (rule, label, arguments of results(), passes)
    ("non_empty", "a real caption", {}, True),
    ("non_empty", "missing", {"caption": None}, False),
    ("non_empty", "blank", {"caption": "   "}, False),
    ("non_empty", "two words", {"caption": "Fibrous stroma."}, False),
    ("english_prose", "English", {}, True),
    (
        "english_prose",
        "German",
        {"caption": "Lockeres fibröses Stroma mit verstreuten kleinen Lymphozyten ünd Kernen."},
        False,
    ),
    (
        "english_prose",
        "Chinese",
        {"caption": "疏松的纤维间质，散在的小淋巴细胞和均匀的小细胞核。"},
        False,
    ),
    (
        "english_prose",
        "a keyword list",
        {"caption": "Stroma, lymphocytes, fibroblasts, collagen, capillaries, nuclei."},
        False,
    ),
    ("plain_paragraph", "one paragraph", {}, True),
    ("plain_paragraph", "a list", {"caption": "- loose stroma\n- scattered lymphocytes."}, False),
    (
        "plain_paragraph",
        "markdown",
        {"caption": "**Loose fibrous stroma** with lymphocytes."},
        False,
    ),
    (
        "plain_paragraph",
        "two paragraphs",
        {"caption": "Loose stroma.\n\nScattered lymphocytes."},
        False,
    ),
    ("sentence_end", "full stop", {}, True),
    (
        "sentence_end",
        "quoted full stop",
        {"caption": 'Loose stroma with "small lymphocytes."'},
        True,
    ),
    (
        "sentence_end",
        "cut mid-sentence",
        {"caption": "Loose fibrous stroma with scattered small"},
        False,
    ),
    ("no_meta_language", "plain caption", {}, True),
    (
        "no_meta_language",
        "refusal",
        {"caption": "I'm sorry, I cannot describe this image of stroma."},
        False,
    ),
    (
        "no_meta_language",
        "prompt talk",
        {"caption": "Based on the given description, loose stroma with small lymphocytes."},
        False,
    ),
    (
        "no_meta_language",
        "preamble",
        {"caption": "Here is a caption: loose fibrous stroma with lymphocytes."},
        False,
    ),
    (
        "no_meta_language",
        "AI talk",
        {"caption": "As an AI model I see loose stroma with lymphocytes."},
        False,
    ),
    (
        "no_meta_language",
        "copied placeholder",
        {"caption": "Loose stroma with <caption text> here."},
        False,
    ),
    (
        "no_meta_language",
        "echoes the summary prompt (SmolLM2 on a sample slide)",
        {
            "caption": "The most important cell and tissue features in this patch are loose "
            "fibrous stroma and small lymphocytes."
        },
        False,
    ),
    ("no_questions", "statement", {}, True),
    (
        "no_questions",
        "question",
        {"caption": "Loose stroma with small lymphocytes. Need more detail?"},
        False,
    ),
    ("no_repetition", "varied", {}, True),
    (
        "no_repetition",
        "a loop",
        {
            "caption": "Small lymphocytes in stroma, small lymphocytes in stroma, "
            "small lymphocytes in stroma, small lymphocytes in stroma."
        },
        False,
    ),
    ("on_topic", "histology", {}, True),
    (
        "on_topic",
        "off topic",
        {"caption": "A pink and purple picture that looks rather pretty today."},
        False,
    ),
    ("clip_length", "77 tokens", {"caption": caption_of_tokens(CLIP_CONTEXT_LENGTH)}, True),
    ("clip_length", "78 tokens", {"caption": caption_of_tokens(CLIP_CONTEXT_LENGTH + 1)}, False),
    ("description_length", "within bounds", {}, True),
    ("description_length", "a stub", {"revised": "Loose stroma with lymphocytes."}, False),
    ("description_length", "runaway", {"revised": LONG_DESCRIPTION}, False),
    ("faithful_to_description", "subset of the description", {}, True),
    (
        "faithful_to_description",
        "synonyms: fibrous tissue, lymphoid cells, spindle nuclei, collagenous",
        {"caption": "Fibrous tissue with scattered lymphoid cells and spindle nuclei in collagenous stroma."},
        True,
    ),
    (
        "faithful_to_description",
        "negation agrees",
        {"caption": "Loose fibrous stroma with small lymphocytes and no necrosis."},
        True,
    ),
    (
        "faithful_to_description",
        "negation flipped",
        {"caption": "Loose fibrous stroma with small lymphocytes and necrosis."},
        False,
    ),
    (
        "faithful_to_description",
        "unsupported finding",
        {"caption": "Loose fibrous stroma with small lymphocytes and marked nuclear pleomorphism."},
        False,
    ),
    (
        "faithful_to_description",
        "unsupported denial",
        {
            "caption": "Loose fibrous stroma with small lymphocytes and no mitoses.",
            "revised": REVISED,
        },
        False,
    ),
    ("caption_grounded", "agrees with the measurements", {}, True),
    (
        "caption_grounded",
        "dense infiltrate in the lowest band",
        {"caption": "A dense lymphocytic infiltrate fills the stroma.", "facts": LOW},
        False,
    ),
    (
        "caption_grounded",
        "an infiltrate, whose band failed the labelled set",
        {"caption": "A dense lymphocytic infiltrate fills the stroma.", "facts": HIGH},
        False,
    ),
    (
        "caption_grounded",
        "high cellularity in the lowest band",
        {"caption": "Stroma of high cellularity with small lymphocytes.", "facts": LOW},
        False,
    ),
    (
        "caption_grounded",
        "necrosis is never measured",
        {
            "caption": "Loose fibrous stroma with small lymphocytes and necrotic debris.",
            "facts": HIGH,
        },
        False,
    ),
    (
        "caption_grounded",
        "denied necrosis is fine",
        {"caption": "Loose fibrous stroma with small lymphocytes and no necrosis.", "facts": LOW},
        True,
    ),
    ("description_grounded", "grounded description", {}, True),
    (
        "description_grounded",
        "description claims hypercellularity in the lowest band",
        {"revised": REVISED.replace("loose fibrous stroma", "hypercellular stroma")},
        False,
    ),
    ("confirmed_by_second_detector", "no second measurement", {}, True),
    (
        "confirmed_by_second_detector",
        "the detectors agree",
        {"caption": "Densely cellular tissue with small round nuclei.", "facts": HIGH,
         "evidence": Evidence("watershed-h-v1", 80, 9500.0, "high", "high")},
        True,
    ),
    (
        "confirmed_by_second_detector",
        "disputed band, but the caption does not claim it",
        {"evidence": Evidence("watershed-h-v1", 30, 4000.0, "moderate", "low")},
        True,
    ),
    (
        "confirmed_by_second_detector",
        "the caption claims a band the second detector measures differently",
        {"caption": "Densely cellular tissue with small round nuclei.", "facts": HIGH,
         "evidence": Evidence("watershed-h-v1", 40, 5200.0, "moderate", "high")},
        False,
    ),
    ("image_text_alignment", "above the threshold", {"alignment": 0.45}, True),
    ("image_text_alignment", "below the threshold", {"alignment": 0.12}, False),
    ("image_text_alignment", "CLIP score above", {"alignment": 27.0, "mode": "clip"}, True),
    ("image_text_alignment", "CLIP score below", {"alignment": 14.0, "mode": "clip"}, False),
    ("image_text_alignment", "no score for a caption", {"alignment": None}, False),
    ("unique_caption", "first of its kind", {}, True),
    (
        "unique_caption",
        "exact duplicate",
        {"duplicate": fidelity.DuplicateMatch(1.0, "slide_x0_y0_s672", True)},
        False,
    ),
    ("not_near_duplicate", "distinct", {"duplicate": fidelity.DuplicateMatch(0.80, None)}, True),
    (
        "not_near_duplicate",
        "paraphrase",
        {"duplicate": fidelity.DuplicateMatch(0.97, "slide_x0_y0_s672")},
        False,
    ),
    ("edit_log_valid", "well formed", {}, True),
    ("edit_log_valid", "no edits needed", {"draft": REVISED, "edits": []}, True),
    ("edit_log_valid", "missing", {"edits": None}, False),
    ("edit_log_valid", "not JSON", {"edits": "modify: Necrosis -> No necrosis"}, False),
    ("edit_log_valid", "not a list", {"edits": {"op": "modify"}}, False),
    ("edit_log_valid", "unknown op", {"edits": [EDITS[0] | {"op": "rewrite"}]}, False),
    (
        "edit_log_valid",
        "span not in draft",
        {"edits": [EDITS[0] | {"span": "Mitoses are seen."}]},
        False,
    ),
    ("edit_log_valid", "changed without edits", {"edits": []}, False),
    ("edit_log_valid", "no draft", {"draft": None}, False),
    ("revision_keeps_draft", "small correction", {}, True),
    (
        "revision_keeps_draft",
        "rewrote most of the draft",
        {
            "revised": REWRITTEN + " " + REWRITTEN.replace("Sheets", "Nests"),
            "edits": [{"op": "modify", "span": DRAFT, "replacement": REWRITTEN, "reason": "redo"}],
        },
        False,
    ),
]


@pytest.mark.parametrize(
    ("rule", "arguments", "passes"),
    [
        pytest.param(rule, arguments, passes, id=f"{rule}: {label}")
        for rule, label, arguments, passes in CASES
    ],
)
def test_rule(rule: str, arguments: dict, passes: bool) -> None:
    verdict = results(**arguments)
    assert verdict.results[rule] is passes, verdict.reasons.get(rule)
    if not passes:
        assert rule in verdict.failed and verdict.reasons[rule]
        assert not verdict.passed
        assert verdict.severe_failure is (rule in SEVERE_RULES) or len(verdict.failed) > 1


def test_every_rule_has_passing_and_failing_cases() -> None:
    for rule in RULE_NAMES:
        outcomes = {passes for name, _, _, passes in CASES if name == rule}
        assert outcomes == {True, False}, (
            f"rule {rule} lacks a {'pass' if False in outcomes else 'fail'} case"
        )


def test_a_good_caption_passes_every_rule() -> None:
    verdict = results()
    assert verdict.passed and not verdict.failed and not verdict.severe_failure
    assert verdict.score == 1.0
    assert set(verdict.results) == set(RULE_NAMES)


def test_the_77_and_78_token_captions_are_what_they_claim() -> None:
    tokenizer = get_tokenizer()
    fits, overflows = caption_of_tokens(77), caption_of_tokens(78)
    assert tokenizer.count(fits) == 77 and tokenizer.count(overflows) == 78
    assert overflows.startswith(fits[:-1])


# --- measuring ----------------------------------------------------------------------------


def test_unsupported_claims_are_listed_with_their_reason() -> None:
    measures = measure(
        {"patch_id": "p", "caption": "Fibrous stroma with necrosis and marked pleomorphism."},
        {"draft": DRAFT, "revised": REVISED, "edits_json": json.dumps(EDITS)},
        LOW,
    )
    assert measures.unsupported_claims == (
        "necrosis [negation_flipped]",
        "marked [unsupported]",
        "pleomorphism [unsupported]",
    )


def test_grounding_reports_each_claim_once_with_the_measured_condition() -> None:
    found = grounding_contradictions("A dense lymphocytic infiltrate with focal necrosis.", LOW)
    assert any(entry.startswith("dense lymphocytic infiltrate:") for entry in found)
    assert not any(entry.startswith("lymphocytic infiltrate:") for entry in found)
    assert any("necrosis" in entry and "necrosis_unmeasured" in entry for entry in found)
    # A degree word that modifies another noun does not make the infiltrate "dense".
    found = grounding_contradictions("Dense stroma; a lymphocytic infiltrate is present.", HIGH)
    assert not any("dense_infiltrate" in entry for entry in found)
    assert grounding_contradictions(None, LOW) == []
    assert grounding_contradictions("Necrosis.", None) == []


@pytest.mark.parametrize(
    ("text", "facts", "rule", "fine"),
    [
        # (claim, facts that contradict it, the extension rule, facts or text that do not)
        ("Stroma with increased cellularity.", LOW, "high_cellularity_synonym_in_low_band", HIGH),
        (
            "Sheets of cells with decreased cellularity.",
            HIGH,
            "low_cellularity_synonym_in_high_band",
            LOW,
        ),
        (
            "Ducts with comedonecrosis.",
            HIGH,
            "unmeasured_finding_synonym",
            "There is no comedonecrosis.",
        ),
        (
            "Scattered signet ring cells.",
            HIGH,
            "unmeasured_finding_synonym",
            "Signet ring cells are absent.",
        ),
        ("Desmoplasia surrounds the cells.", HIGH, "stromal_reaction_in_scant_stroma", LOW),
    ],
)
def test_grounding_extensions_catch_what_the_verbalizer_table_misses(text, facts, rule, fine) -> None:
    from pathgen_dagster.lib.captions import verbalize

    assert verbalize.contradictions(text, facts) == []
    found = grounding_contradictions(text, facts)
    assert len(found) == 1 and found[0].endswith(f"[{rule}]")
    if isinstance(fine, str):
        assert grounding_contradictions(fine, facts) == []
    else:
        assert grounding_contradictions(text, fine) == []


def test_grounding_includes_the_verbalizer_rules() -> None:
    from pathgen_dagster.lib.captions import verbalize

    text = "Stroma of high cellularity with small lymphocytes."
    theirs = verbalize.contradictions(text, LOW)
    ours = grounding_contradictions(text, LOW)
    assert [f"{phrase}: {reason}" for phrase, reason in theirs] == ours[: len(theirs)]
    assert ours  # ours or theirs: the claim is reported


def test_caption_key_folds_case_punctuation_and_spacing() -> None:
    assert caption_key("Loose stroma, with lymphocytes.") == caption_key("loose  stroma with LYMPHOCYTES")
    assert caption_key("Loose stroma.") != caption_key("Dense stroma.")


def test_deleted_fraction_measures_words_removed() -> None:
    assert fidelity.deleted_fraction(DRAFT, DRAFT) == 0.0
    assert fidelity.deleted_fraction(DRAFT, REVISED) < 0.1
    assert fidelity.deleted_fraction(DRAFT, "Stroma.") > 0.9
    assert fidelity.deleted_fraction(None, REVISED) == 0.0


def test_thresholds_come_from_the_config() -> None:
    strict = dataclasses.replace(DEFAULT_CONFIG, min_alignment=0.7, max_clip_tokens=20)
    verdict = results(alignment=0.6, config=strict)
    assert verdict.failed == ("clip_length", "image_text_alignment")


# --- whole slides: duplicates and alignment with the real sentence encoder ------------------


def slide(captions: dict[str, str | None], facts: MorphologyFacts = LOW) -> SlideInputs:
    revision = {"draft": DRAFT, "revised": REVISED, "edits_json": json.dumps(EDITS)}
    return SlideInputs(
        captions=[{"patch_id": pid, "caption": text} for pid, text in captions.items()],
        revisions=dict.fromkeys(captions, revision),
        facts=dict.fromkeys(captions, facts),
        tissue_sites=dict.fromkeys(captions, "skin"),
    )


def test_duplicates_within_the_slide(encoder: SentenceEncoder) -> None:
    inputs = slide(
        {
            "s_p3": "Loose fibrous stroma, with scattered small lymphocytes.",  # exact copy of p1
            "s_p1": "Loose fibrous stroma with scattered small lymphocytes.",
            "s_p2": "Scattered small lymphocytes in loose fibrous stroma.",
            "s_p4": "Small uniform nuclei of fibroblasts lie between thin collagen bundles.",
            "s_p5": None,
        }
    )
    measured = measure_slide(inputs, encode=encoder.encode)
    by_id = {m.patch_id: m for m in measured.measures}
    assert [m.patch_id for m in measured.measures] == ["s_p1", "s_p2", "s_p3", "s_p4", "s_p5"]
    assert not by_id["s_p1"].exact_duplicate and by_id["s_p1"].duplicate_of is None
    assert by_id["s_p3"].exact_duplicate and by_id["s_p3"].duplicate_of == "s_p1"
    assert by_id["s_p2"].max_duplicate_similarity >= DEFAULT_CONFIG.near_duplicate_similarity
    assert by_id["s_p2"].duplicate_of == "s_p1" and not by_id["s_p2"].exact_duplicate
    assert by_id["s_p4"].max_duplicate_similarity < DEFAULT_CONFIG.near_duplicate_similarity
    assert by_id["s_p4"].duplicate_of is None
    assert by_id["s_p5"].max_duplicate_similarity == 0.0
    verdicts = {m.patch_id: judge(m) for m in measured.measures}
    assert verdicts["s_p3"].results["unique_caption"] is False
    assert verdicts["s_p2"].results["not_near_duplicate"] is False
    assert verdicts["s_p2"].results["unique_caption"] is True
    assert verdicts["s_p1"].passed and verdicts["s_p4"].passed
    assert measured.embeddings.shape == (5, 384) and not measured.embeddings[4].any()


def test_near_duplicates_must_make_the_same_claims(encoder: SentenceEncoder) -> None:
    # Two grounded captions of the real CMU slide: MiniLM scores them 0.98, yet one says
    # abundant stroma and the other scant stroma. They are different captions.
    template = (
        "Densely cellular tissue containing medium-sized nuclei showing little variation in "
        "nuclear size, {} eosinophilic stroma and prominent clear spaces."
    )
    inputs = slide({"s_p1": template.format("abundant"), "s_p2": template.format("scant")})
    first, second = measure_slide(inputs, encode=encoder.encode).measures
    cosine = float(np.dot(*encoder.encode([first.caption, second.caption])))
    assert cosine >= DEFAULT_CONFIG.near_duplicate_similarity
    assert second.duplicate_of is None and second.max_duplicate_similarity == 0.0
    assert fidelity.claim_signature(first.caption) != fidelity.claim_signature(second.caption)


def test_duplicates_against_other_slides(encoder: SentenceEncoder) -> None:
    kept = ["Loose fibrous stroma with scattered small lymphocytes.", "Sheets of tumour cells."]
    reference = ReferenceCaptions(
        patch_ids=["other_p1", "other_p2"],
        keys=[caption_key(text) for text in kept],
        embeddings=encoder.encode(kept),
        signatures=[fidelity.claim_signature(text) for text in kept],
    )
    inputs = slide(
        {
            "s_p1": "LOOSE fibrous stroma with scattered small lymphocytes",
            "s_p2": "Small uniform nuclei of fibroblasts lie between thin collagen bundles.",
            "s_p3": "A loose fibrous stroma with some scattered small lymphocytes.",
        }
    )
    measured = measure_slide(inputs, encode=encoder.encode, reference=reference)
    first, second, third = measured.measures
    assert first.exact_duplicate and first.duplicate_of == "other_p1"
    assert not second.exact_duplicate and second.duplicate_of is None
    assert third.duplicate_of == "other_p1" and not third.exact_duplicate
    assert judge(first).results["unique_caption"] is False
    assert judge(third).results["not_near_duplicate"] is False


def test_alignment_against_the_verbalised_facts(encoder: SentenceEncoder) -> None:
    inputs = slide(
        {
            "s_p1": GOOD,
            "s_p2": "A red car is parked on a quiet street at night under a lamp.",
        }
    )
    measured = measure_slide(inputs, encode=encoder.encode)
    aligned, unrelated = measured.measures
    assert aligned.alignment_mode == "minilm_facts"
    assert aligned.alignment_score >= DEFAULT_CONFIG.min_alignment
    assert unrelated.alignment_score < DEFAULT_CONFIG.min_alignment
    assert judge(unrelated).results["image_text_alignment"] is False


def test_clip_scores_replace_the_default_alignment(encoder: SentenceEncoder) -> None:
    inputs = slide({"s_p2": "Loose stroma with lymphocytes.", "s_p1": "Loose stroma and nuclei."})
    measured = measure_slide(inputs, encode=encoder.encode, image_text_scores=[18.0, 31.5])
    assert [(m.patch_id, m.alignment_mode, m.alignment_score) for m in measured.measures] == [
        ("s_p1", "clip", 31.5),
        ("s_p2", "clip", 18.0),
    ]


def test_empty_slide(encoder: SentenceEncoder) -> None:
    measured = measure_slide(slide({}), encode=encoder.encode)
    assert measured.measures == [] and measured.embeddings.shape[0] == 0


# --- verdicts, gate, versions --------------------------------------------------------------


def test_warn_failures_quarantine_but_do_not_count_for_the_gate() -> None:
    verdict = results(alignment=0.05)
    assert verdict.failed == ("image_text_alignment",)
    assert not verdict.passed and not verdict.severe_failure
    assert verdict.score == pytest.approx(1 - 1 / len(RULES))


def test_gate_blocks_beyond_the_rate_and_names_slide_and_rules() -> None:
    bad_caption = "Fibrous stroma with necrosis and marked nuclear pleomorphism."
    good, bad = results().results, results(caption=bad_caption).results
    gate = gate_slide("slide-a", [good] * 8 + [bad] * 2, max_rate=0.2)
    assert gate.passed and gate.severe_failure_rate == pytest.approx(0.2)
    gate = gate_slide("slide-a", [good] * 7 + [bad] * 3, max_rate=0.2)
    assert not gate.passed and gate.severe_failures == 3
    assert list(gate.failing_rules) == ["faithful_to_description", "caption_grounded"]
    assert "slide 'slide-a'" in gate.message and "faithful_to_description (3)" in gate.message
    assert "NOT passed" in gate.message and "Fix:" in gate.message
    assert gate_slide("empty", []).passed


def test_pass_rates_cover_every_rule() -> None:
    good, bad = results().results, results(caption=None).results
    rates = pass_rates([good, bad, good, good])
    assert set(rates) == set(RULE_NAMES)
    assert rates["non_empty"] == 0.75 and rates["clip_length"] == 1.0
    assert pass_rates([]) == dict.fromkeys(RULE_NAMES, 1.0)


def test_ruleset_version_names_rules_and_lexicon() -> None:
    version = ruleset_version()
    assert version.startswith(fidelity.RULESET_VERSION + "+")
    assert version.endswith(f"lexicon.{get_lexicon().version}")
    assert version == ruleset_version()


def test_rules_table_documents_every_rule() -> None:
    table = fidelity.rules_table()
    assert [row["name"] for row in table] == list(RULE_NAMES)
    assert {row["severity"] for row in table} == {"severe", "warn"}
    assert all(row["measures"] and row["threshold"] for row in table)
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))


def test_judge_on_measures_uses_only_the_measures() -> None:
    # judge() is pure: the same measures give the same verdict, whatever else changed.
    measures = measure({"patch_id": "p", "caption": GOOD}, None, LOW, alignment_score=0.5)
    first, second = judge(measures), judge(measures)
    assert first == second
    assert first.results["edit_log_valid"] is False  # no revision row at all
    assert first.results["description_length"] is False
    assert first.reasons["faithful_to_description"].startswith("claims the description")
    assert np.isclose(first.score, sum(first.results.values()) / len(RULES))


# --- the grounded agents' own text must pass ------------------------------------------------


def test_band_wording_the_lexicon_does_not_parse_still_supports_a_caption() -> None:
    description = (
        "The nuclei are predominantly large and show marked variation in nuclear size. "
        "Clusters of round, darkly stained nuclei raise the possibility of an inflammatory "
        "infiltrate."
    )
    caption = "Cellular tissue with large nuclei and a possible lymphocytic infiltrate."
    assert fidelity.unsupported_claims(caption, description) == []
    # ... but a flipped negation, or a band label the description does not give, is not.
    assert fidelity.unsupported_claims("Tissue with small nuclei.", description) == [
        "small nuclei [band_contradicted]"
    ]
    assert fidelity.unsupported_claims("Tissue of moderate cellularity.", description) == [
        "moderate [unsupported]"
    ]
    flipped = fidelity.unsupported_claims("No inflammatory infiltrate.", description)
    assert flipped == ["no inflammatory infiltrate [negation_flipped]"]


@pytest.mark.parametrize("seed", range(4))
def test_grounded_agent_captions_pass_every_rule(seed: int, encoder: SentenceEncoder) -> None:
    from pathgen_dagster.lib.captions import verbalize

    rng = np.random.default_rng(seed)
    captions, revisions, facts = [], {}, {}
    for i in range(12):
        measurements = dict(LOW_CELLULARITY)
        for band in BANDS.values():
            measurements[band.measure] *= float(rng.uniform(0.3, 6.0))
        measurements["white_fraction"] = min(measurements["white_fraction"], 0.9)
        measurements["tissue_fraction"] = 1 - measurements["white_fraction"]
        patch_facts = make_facts(measurements)
        pid = f"grounded_{seed}_{i:02d}"
        draft = verbalize.describe(patch_facts, tissue_site="lung", seed=pid)
        revised, edits = verbalize.revise(draft, patch_facts, seed=pid)
        caption = verbalize.summarize(revised, patch_facts, seed=pid, tissue_site="lung")
        captions.append({"patch_id": pid, "caption": caption})
        revisions[pid] = {"draft": draft, "revised": revised, "edits_json": json.dumps(edits)}
        facts[pid] = patch_facts
    inputs = SlideInputs(captions, revisions, facts, dict.fromkeys(facts, "lung"))
    for measures in measure_slide(inputs, encode=encoder.encode).measures:
        verdict = judge(measures)
        # Templated captions of patches with identical bands are true duplicates.
        failed = set(verdict.failed) - {"unique_caption", "not_near_duplicate"}
        assert not failed, (measures.caption, verdict.reasons)
