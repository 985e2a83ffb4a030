"""Screening rules: each with a passing and a failing example."""

from __future__ import annotations

import pytest

from pathgen_dagster.lib.captions.screening import RULE_NAMES, RULES, screen_output

GOOD = (
    "The patch shows sheets of atypical epithelial cells with enlarged, hyperchromatic nuclei "
    "and scant eosinophilic cytoplasm. Irregular glands are set in a desmoplastic stroma, and "
    "a few lymphocytes are scattered at the edge of the tissue."
)

# (rule, acceptable text, failing text); finish_reason is "stop" unless the rule needs more.
CASES = [
    ("empty", "Dense cellular tissue.", "  \n "),
    ("refusal_or_meta", GOOD, "As an AI, I cannot see the image, but the cells look dense."),
    ("refusal_or_meta", GOOD, "I'm sorry, the tissue is not clear."),
    ("refusal_or_meta", GOOD, "Based on the given description, the stroma is loose."),
    ("refusal_or_meta", GOOD, "The additional description mentions glands in the tissue."),
    ("refusal_or_meta", GOOD, "As stated in the auxiliary text, nuclei are enlarged."),
    ("refusal_or_meta", GOOD, "The measured facts show dense nuclei in the tissue."),
    ("placeholder", GOOD, "<the corrected description>"),
    ("placeholder", "Nuclei measure <10 um across in the tissue.", "[Tissue type] with cells."),
    ("question", "Glands with crowded nuclei. Stroma is scant.", "Is this tissue a gland?"),
    ("question", GOOD, "The cells are crowded. Would you like more detail on the nuclei?"),
    (
        "repetition",
        GOOD,
        "The cells are large and the cells are large and the cells are large and the cells "
        "are large and the cells are large.",
    ),
    (
        "repetition",
        "The cells are dense. The stroma is loose. The cells are round.",
        "Glands glands glands glands glands glands in tissue.",
    ),
    ("non_english", "Nuclei measure 8 \u00b5m across in the dense tissue.", "Células tumorales con núcleos grandes y hipercromáticos en el estroma ¿ñ"),  # noqa: E501
    ("non_english", GOOD, "Zellen mit Kernen in dem Gewebe sind vergrößert und liegen dicht gedrängt nebeneinander im Stroma"),  # noqa: E501
    ("non_english", GOOD, "\u764c\u7ec6\u80de\u6838\u589e\u5927 cells"),
    ("formatting", GOOD, "Findings:\n- enlarged nuclei\n- scant stroma"),
    ("formatting", GOOD, "1. Enlarged nuclei in the tissue.\n2. Scant stroma."),
    ("formatting", GOOD, "The **nuclei** are enlarged in the tissue."),
    ("formatting", GOOD, "## Description\nEnlarged nuclei in the tissue."),
    ("off_topic", "A crowded field of lymphocytes.", "The weather in Paris is lovely in spring."),
    ("off_topic", "Fibrotic, hyalinised background.", "Hello there! How can I assist you today."),
]  # fmt: skip


def test_rule_table_is_named_and_unique() -> None:
    names = [rule.name for rule in RULES]
    assert len(set(names)) == len(names)
    assert set(names) | {"copied_example"} == set(RULE_NAMES)
    assert all(rule.description for rule in RULES)


def test_a_real_description_passes() -> None:
    assert screen_output(GOOD, "stop") is None


@pytest.mark.parametrize(("rule", "passing", "failing"), CASES)
def test_rule_fires_on_its_example_only(rule: str, passing: str, failing: str) -> None:
    assert screen_output(passing, "stop") is None
    reason = screen_output(failing, "stop")
    assert reason is not None and reason.split(":")[0] == rule, reason


def test_truncated_by_finish_reason() -> None:
    assert screen_output(GOOD, "stop") is None
    assert screen_output(GOOD, None) is None
    reason = screen_output(GOOD, "length")
    assert reason == "truncated: finish_reason is 'length'"


def test_reason_names_what_fired() -> None:
    reason = screen_output("The cells are large and " * 5, "stop")
    assert reason is not None
    assert reason.startswith("repetition: 'the cells are' occurs 5 times")


def test_copied_example_only_with_phrases() -> None:
    text = "Scattered small dark nuclei lie between them in the tissue."
    assert screen_output(text, "stop") is None
    reason = screen_output(text, "stop", example_phrases=("small dark nuclei lie between them",))
    assert reason is not None and reason.startswith("copied_example")
