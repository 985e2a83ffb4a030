"""PathGen-Instruct design and rules on measured facts (tests/assets/facts_example.json is
the morphology of a real CMU patch), each rule with a passing and a failing instance."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.agents import Rejected, ResponseCache
from pathgen_dagster.lib.instructions.agent import parse_answers
from pathgen_dagster.lib.instructions.conversation import PairInput, llava_turns, plan
from pathgen_dagster.lib.instructions.generate import build_slide
from pathgen_dagster.lib.instructions.multiple_choice import (
    LETTERS,
    balanced_letters,
    design,
    statements,
)
from pathgen_dagster.lib.instructions.rules import (
    Context,
    Instruction,
    duplicate_questions,
    gate_slide,
    judge,
    letter_balance,
)
from pathgen_dagster.lib.selection.facts import BANDS, MorphologyFacts

FACTS = MorphologyFacts.from_dict(
    json.loads((Path(__file__).parents[2] / "assets" / "facts_example.json").read_text())
)


def pair_for(facts: MorphologyFacts, pair_id: str) -> PairInput:
    """A pair as the caption chain leaves it: grounded description, revised."""
    draft = verbalize.describe(facts, tissue_site=None, seed=pair_id)
    revised, _ = verbalize.revise(draft, facts, seed=pair_id)
    return PairInput(pair_id, pair_id, facts, revised, f"sha-{pair_id}")


def varied_facts() -> list[MorphologyFacts]:
    """Facts over many band combinations (labels varied; the measured numbers kept)."""
    combos = itertools.product(
        BANDS["cellularity"].labels,
        BANDS["nuclear_size"].labels,
        BANDS["stroma"].labels,
        BANDS["lumen_or_fat"].labels,
        BANDS["inflammation_hint"].labels,
    )
    return [
        dataclasses.replace(
            FACTS, cellularity=c, nuclear_size=n, stroma=s, lumen_or_fat=w, inflammation_hint=i
        )
        for c, n, s, w, i in combos
    ]


def mc_rows(count: int = 150):
    pairs = [pair_for(f, f"slide_x{i}_y0_s672") for i, f in enumerate(varied_facts())][:count]
    rows = build_slide("slide", pairs, session=None, cache=ResponseCache({}))
    return pairs, rows


def test_statements_split_into_consistent_and_contradicted():
    pool = statements(FACTS, seed="p")
    consistent = [s for s in pool if s.consistent]
    assert {s.band for s in consistent} >= {"cellularity", "stroma", "lumen_or_fat"}
    assert all(getattr(FACTS, s.band) == s.label for s in consistent)
    wrong = [s for s in pool if not s.consistent]
    assert wrong and all(getattr(FACTS, s.band) != s.label for s in wrong)
    assert all(any("_contradicted]" in r for r in s.contradictions) for s in wrong)


def test_grounded_slide_of_150_pairs_passes_every_rule_with_balanced_letters():
    pairs, rows = mc_rows()
    by_kind = Counter(r.kind for r in rows)
    assert by_kind["multiple_choice"] >= 100 and by_kind["conversation"] == len(pairs)
    assert [r for r in rows if r.failed_rules] == []
    letters = [r.answer_letter for r in rows if r.kind == "multiple_choice"]
    balance = letter_balance(letters)
    assert balance.passed and max(balance.counts.values()) / len(letters) <= 0.35
    for row in rows:
        assert 2 <= len(row.turns) // 2 <= 4 or row.kind == "multiple_choice"
        assert sum(t["value"].count("<image>") for t in row.turns) == 1
    # Varied wording: many distinct question templates per 100 items.
    templates = {t for r in rows[:100] for t in r.question_template_ids}
    assert len(templates) >= 15


def _mc_instruction(mc) -> Instruction:
    return Instruction(
        "multiple_choice",
        llava_turns([mc.prompt()], [mc.answer_letter]),
        mc.question.text,
        mc.options,
        mc.answer_letter,
    )


def test_item_whose_correct_option_the_facts_contradict_is_rejected():
    mc = design(FACTS, seed="p", item=0, answer_letter="B")
    ctx = Context(FACTS, pair_for(FACTS, "p").revised_description)
    assert judge(_mc_instruction(mc), ctx) == []
    # Point the answer at a distractor: the "correct" option is now measurably wrong.
    wrong = dataclasses.replace(mc, answer_letter="A")
    failed = dict(judge(_mc_instruction(wrong), ctx))
    assert "correct_consistent" in failed and "contradicted" in failed["correct_consistent"]
    # The same item judged against facts where the distractor is true fails the other way.
    flipped = dataclasses.replace(FACTS, **{mc.distractors[0].band: mc.distractors[0].label})
    failed = dict(judge(_mc_instruction(mc), Context(flipped, "")))
    assert "distractors_contradicted" in failed or "correct_consistent" in failed


def test_distractor_the_facts_do_not_contradict_fails():
    mc = design(FACTS, seed="p", item=0, answer_letter="C")
    ctx = Context(FACTS, "")
    options = list(mc.options)
    options[0] = "The H&E-stained section shows tissue with cells and stroma."
    row = dataclasses.replace(_mc_instruction(mc), options=tuple(options))
    assert dict(judge(row, ctx)).keys() >= {"distractors_contradicted"}


def test_question_that_gives_the_answer_away_fails():
    mc = design(FACTS, seed="p", item=0, answer_letter="D")
    ctx = Context(FACTS, "")
    leaky = dataclasses.replace(_mc_instruction(mc), question=f"Is it true that {mc.answer_text}")
    assert "question_neutral" in dict(judge(leaky, ctx))
    asserting = dataclasses.replace(_mc_instruction(mc), question="Given the abundant stroma, which?")
    assert "question_neutral" in dict(judge(asserting, ctx))


def test_option_count_and_letter_rules():
    mc = design(FACTS, seed="p", item=1, answer_letter="A")
    ctx = Context(FACTS, "")
    three = dataclasses.replace(_mc_instruction(mc), options=mc.options[:3])
    assert "four_options" in dict(judge(three, ctx))
    worded = dataclasses.replace(_mc_instruction(mc), turns=llava_turns([mc.prompt()], [mc.answer_text]))
    assert "answer_is_letter" in dict(judge(worded, ctx))


def test_conversation_plan_is_well_formed_and_grounded():
    pair = pair_for(FACTS, "slide_x1_y1_s672")
    conversation = plan(pair)
    assert 2 <= len(conversation.questions) <= 4
    row = Instruction(
        "conversation",
        llava_turns([q.text for q in conversation.questions], list(conversation.grounded_answers)),
    )
    assert judge(row, Context(FACTS, pair.revised_description)) == []


@pytest.mark.parametrize(
    ("turns", "rule"),
    [
        ([{"from": "human", "value": "How cellular?"}, {"from": "gpt", "value": "x"}], "image_token_once"),
        (
            [{"from": "human", "value": "<image>\nQ"}, {"from": "human", "value": "<image>\nQ"}],
            "roles_alternate",
        ),
        ([{"from": "human", "value": "<image>\nQ"}, {"from": "model", "value": "A"}], "llava_shape"),
        ([{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "  "}], "llava_shape"),
    ],
)
def test_structure_rules_fail_malformed_conversations(turns, rule):
    assert rule in dict(judge(Instruction("conversation", turns), Context(FACTS, "")))


def test_answer_rules_fail_contradicted_unsupported_and_empty_answers():
    pair = pair_for(FACTS, "p")
    ctx = Context(FACTS, pair.revised_description)
    good = plan(pair)
    questions = [q.text for q in good.questions]

    def failing(answer: str) -> set[str]:
        answers = [answer, *good.grounded_answers[1:]]
        return set(dict(judge(Instruction("conversation", llava_turns(questions, answers)), ctx)))

    assert "answers_grounded" in failing("The tissue is sparsely cellular with scant stroma.")
    assert "answers_grounded" in failing("There is extensive necrosis in the densely cellular tissue.")
    assert "answers_substantive" in failing("This is a picture of a slide.")
    one_turn = Instruction("conversation", llava_turns(questions[:1], list(good.grounded_answers[:1])))
    assert "turn_count" in dict(judge(one_turn, ctx))


def test_repeated_question_about_one_image_is_flagged():
    mc = design(FACTS, seed="p", item=0, answer_letter="A")
    row = _mc_instruction(mc)
    assert duplicate_questions([("img1", row), ("img2", row), ("img1", row)]) == [2]


def test_letter_balance_rule():
    assert letter_balance(balanced_letters(120, seed="s")).passed
    skewed = ["A"] * 50 + ["B", "C", "D"] * 24
    result = letter_balance(skewed)
    assert not result.passed and "letter A answers 50 of 122" in result.message
    assert letter_balance(["A", "B", "C"]).passed
    assert not letter_balance(["A"] * 4 + ["B"]).passed


def test_slide_whose_rows_mostly_fail_is_blocked_with_slide_and_rules():
    gate = gate_slide("S1", [["answers_grounded"], ["answers_grounded", "llava_shape"], []])
    assert not gate.passed
    assert "'S1'" in gate.message and "answers_grounded (2)" in gate.message
    assert gate_slide("S1", [["llava_shape"], [], []]).passed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sure! Here are the answers.", "does not start with a JSON object"),
        ('{"answers": ["a", "b"]', "not valid JSON"),
        ('{"answers": ["a"], "extra": 1}', "unexpected keys"),
        ('{"answer": ["a", "b"]}', "missing keys"),
        ('{"answers": "a b"}', "list of strings"),
        ('{"answers": ["a"]}', "1 answers for 2 questions"),
        ('{"answers": ["a", "a"], "answers": ["b", "b"]}', "duplicate keys"),
    ],
)
def test_malformed_model_answers_are_rejected_with_the_reason(text, reason):
    with pytest.raises(Rejected, match=reason):
        parse_answers(text, expected=2)
    assert parse_answers('```json\n{"answers": ["a  b", "c"]}\n```', expected=2) == ["a b", "c"]


def test_letters_within_one_per_block():
    letters = balanced_letters(10, seed="x")
    counts = Counter(letters)
    assert set(counts) == set(LETTERS) and max(counts.values()) - min(counts.values()) <= 1


def test_instruction_prompts_render_with_the_planned_questions():
    from pathgen_dagster.lib.captions.agents import AgentConfig, PatchInput
    from pathgen_dagster.lib.instructions.agent import INSTRUCTION_FACTS, InstructionAgent

    pair = pair_for(FACTS, "p")
    agent = InstructionAgent({"p": plan(pair)}, {"p": pair})
    values = agent.values(PatchInput("p", FACTS), AgentConfig(), None)
    system, user = INSTRUCTION_FACTS.render(**values)
    assert '{"answers": [' in system["content"]
    assert "1. " in user["content"] and pair.revised_description in user["content"]
