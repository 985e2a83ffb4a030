"""The validators of PathGen-Instruct: every rule a row must pass to be exported.

Measuring and judging are kept apart as in :mod:`pathgen_dagster.lib.quality.fidelity`:
each rule reads an :class:`Instruction` and the patch's facts and says why it fails (or
None). A row that fails any rule is quarantined: kept in ``instructions`` with its
reasons, left out of the export. Two rules look across a slide: a question asked twice
about one image (:func:`duplicate_questions`), and the answer-letter balance
(:func:`letter_balance`, judged per slide by the asset check).

Answers are checked with the caption rules: ``grounding_contradictions`` (claims the
measured facts contradict), ``unsupported_claims`` (claims neither the revised
description nor the measured facts support) and the agents' output screens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.screening import screen_output
from pathgen_dagster.lib.instructions.conversation import (
    GPT,
    HUMAN,
    IMAGE_TOKEN,
    MAX_TURNS,
    MIN_TURNS,
    support_text,
)
from pathgen_dagster.lib.instructions.multiple_choice import LETTERS, N_OPTIONS
from pathgen_dagster.lib.quality.fidelity import grounding_contradictions, unsupported_claims
from pathgen_dagster.lib.selection.facts import MorphologyFacts

RULESET_VERSION = "instructions-1"
Kind = Literal["conversation", "multiple_choice"]
KINDS: tuple[str, ...] = ("conversation", "multiple_choice")
MAX_LETTER_SHARE = 0.35
LETTER_BALANCE_MIN_QUESTIONS = 100
MAX_QUARANTINE_SHARE = 0.5


@dataclass(frozen=True)
class Instruction:
    """What the rules judge: one conversation or multiple-choice item about one patch.

    Attributes:
        kind: ``conversation`` or ``multiple_choice``.
        turns: LLaVA ``conversations``, ``[{"from": "human"|"gpt", "value": str}, ...]``.
        question: the multiple-choice stem (None for conversations).
        options: the four options in letter order (empty for conversations).
        answer_letter: the letter of the consistent option (None for conversations).
    """

    kind: Kind
    turns: list[dict]
    question: str | None = None
    options: tuple[str, ...] = ()
    answer_letter: str | None = None


@dataclass(frozen=True)
class Context:
    """What a row is checked against: the patch's facts and its revised description."""

    facts: MorphologyFacts
    revised_description: str

    @property
    def support(self) -> str:
        """Text that may support an answer: the revised description and the measured facts."""
        return support_text(self.revised_description, self.facts)


Check = Callable[[Instruction, Context], str | None]


@dataclass(frozen=True)
class Rule:
    """A named validator; ``kinds`` are the row kinds it applies to."""

    name: str
    kinds: tuple[str, ...]
    description: str
    check: Check = field(repr=False)


def _answers(row: Instruction) -> list[str]:
    return [t.get("value", "") for t in row.turns if isinstance(t, dict) and t.get("from") == GPT]


def _llava_shape(row: Instruction, ctx: Context) -> str | None:
    if not isinstance(row.turns, list) or not row.turns:
        return "conversations is not a non-empty list"
    for index, turn in enumerate(row.turns):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            return f"turn {index} is not an object with exactly 'from' and 'value'"
        if turn["from"] not in (HUMAN, GPT):
            return f"turn {index}: 'from' is {turn['from']!r}, not human or gpt"
        if not isinstance(turn["value"], str) or not turn["value"].replace(IMAGE_TOKEN, "").strip():
            return f"turn {index} has an empty value"
    return None


def _roles_alternate(row: Instruction, ctx: Context) -> str | None:
    roles = [t.get("from") for t in row.turns if isinstance(t, dict)]
    expected = [HUMAN, GPT] * (len(roles) // 2 + 1)
    if len(roles) % 2 or roles != expected[: len(roles)]:
        return f"roles are {roles}, not human/gpt alternating from human and ending with gpt"
    return None


def _image_token_once(row: Instruction, ctx: Context) -> str | None:
    values = [t.get("value", "") for t in row.turns if isinstance(t, dict)]
    count = sum(str(v).count(IMAGE_TOKEN) for v in values)
    if count != 1:
        return f"{IMAGE_TOKEN} occurs {count} times, not once"
    if not values or not str(values[0]).startswith(IMAGE_TOKEN + "\n"):
        return f"{IMAGE_TOKEN} does not open the first human turn"
    return None


def _turn_count(row: Instruction, ctx: Context) -> str | None:
    exchanges = len(row.turns) // 2
    low, high = (MIN_TURNS, MAX_TURNS) if row.kind == "conversation" else (1, 1)
    if not low <= exchanges <= high:
        return f"{exchanges} question-answer turns, allowed {low}-{high}"
    return None


def _answers_screened(row: Instruction, ctx: Context) -> str | None:
    for index, answer in enumerate(_answers(row)):
        if (reason := screen_output(answer, "stop")) is not None:
            return f"answer {index}: {reason}"
    return None


def _answers_substantive(row: Instruction, ctx: Context) -> str | None:
    for index, answer in enumerate(_answers(row)):
        if not verbalize.read_claims(answer):
            return f"answer {index} states nothing that was measured: {answer[:60]!r}"
    return None


def _answers_grounded(row: Instruction, ctx: Context) -> str | None:
    for index, answer in enumerate(_answers(row)):
        if found := grounding_contradictions(answer, ctx.facts):
            return f"answer {index}: " + "; ".join(found[:2])
    return None


def _answers_faithful(row: Instruction, ctx: Context) -> str | None:
    for index, answer in enumerate(_answers(row)):
        if found := unsupported_claims(answer, ctx.support):
            return f"answer {index}: not supported by the description or facts: {found[:2]}"
    return None


def _four_options(row: Instruction, ctx: Context) -> str | None:
    options = [o.strip() for o in row.options]
    if len(options) != N_OPTIONS or not all(options):
        return f"{len(options)} options (non-empty: {sum(map(bool, options))}), not {N_OPTIONS}"
    if len({o.lower() for o in options}) != N_OPTIONS:
        return "two options are the same"
    if row.answer_letter not in LETTERS:
        return f"answer letter {row.answer_letter!r} is not one of {list(LETTERS)}"
    return None


def _answer_is_letter(row: Instruction, ctx: Context) -> str | None:
    answers = _answers(row)
    if answers != [row.answer_letter]:
        return f"the gpt turn is {answers!r}, not the answer letter {row.answer_letter!r}"
    return None


def _correct_option(row: Instruction) -> str | None:
    if row.answer_letter in LETTERS and len(row.options) == N_OPTIONS:
        return row.options[LETTERS.index(row.answer_letter)]
    return None


def _correct_consistent(row: Instruction, ctx: Context) -> str | None:
    correct = _correct_option(row)
    if correct is None:
        return "no correct option to check"
    if found := grounding_contradictions(correct, ctx.facts):
        return f"the 'correct' option {row.answer_letter} is contradicted: {found[0]}"
    if not verbalize.read_claims(correct):
        return f"the 'correct' option {row.answer_letter} claims nothing that was measured"
    return None


def _distractors_contradicted(row: Instruction, ctx: Context) -> str | None:
    correct = _correct_option(row)
    for letter, option in zip(LETTERS, row.options, strict=False):
        if option == correct:
            continue
        found = grounding_contradictions(option, ctx.facts)
        if not any("_contradicted]" in reason for reason in found):
            return f"distractor {letter} is not contradicted by the measured facts: {option[:60]!r}"
    return None


_NOISE = re.compile(r"[^a-z0-9]+")


def _key(text: str) -> str:
    return _NOISE.sub(" ", text.lower()).strip()


def _question_neutral(row: Instruction, ctx: Context) -> str | None:
    question = row.question or ""
    correct = _correct_option(row)
    if correct and _key(correct) in _key(question):
        return "the correct option's text appears in the question"
    if claims := verbalize.read_claims(question):
        return f"the question asserts {claims[0].phrase!r}, which may give the answer away"
    return None


RULES: tuple[Rule, ...] = (
    Rule("llava_shape", KINDS, "turns are {from, value} objects, human or gpt, non-empty", _llava_shape),
    Rule("roles_alternate", KINDS, "human first, then gpt, alternating, ending with gpt", _roles_alternate),
    Rule("image_token_once", KINDS, "<image> exactly once, opening the first human turn", _image_token_once),
    Rule("turn_count", KINDS, "conversations 2-4 question-answer turns; multiple choice 1", _turn_count),
    Rule("answers_screened", ("conversation",), "answers pass the agents' output screens", _answers_screened),
    Rule(
        "answers_substantive", ("conversation",), "every answer states a measured band", _answers_substantive
    ),
    Rule(
        "answers_grounded",
        ("conversation",),
        "no answer claim contradicts the measured facts",
        _answers_grounded,
    ),
    Rule(
        "answers_faithful",
        ("conversation",),
        "answer claims supported by description or facts",
        _answers_faithful,
    ),
    Rule("four_options", ("multiple_choice",), "four distinct options and a letter A-D", _four_options),
    Rule("answer_is_letter", ("multiple_choice",), "the gpt turn is the answer letter", _answer_is_letter),
    Rule(
        "correct_consistent",
        ("multiple_choice",),
        "the correct option agrees with the facts",
        _correct_consistent,
    ),
    Rule(
        "distractors_contradicted",
        ("multiple_choice",),
        "the facts contradict all three distractors",
        _distractors_contradicted,
    ),
    Rule(
        "question_neutral",
        ("multiple_choice",),
        "the question neither contains nor asserts the answer",
        _question_neutral,
    ),
)
RULE_NAMES: tuple[str, ...] = (*(rule.name for rule in RULES), "duplicate_question")


def judge(row: Instruction, ctx: Context) -> list[tuple[str, str]]:
    """(rule, reason) for every rule of the row's kind that it fails."""
    return [
        (rule.name, reason)
        for rule in RULES
        if row.kind in rule.kinds and (reason := rule.check(row, ctx)) is not None
    ]


def question_key(row: Instruction) -> str:
    """What makes two questions about one image the same: the stem (or first question)."""
    if row.kind == "multiple_choice":
        return _key(row.question or "")
    first = next((t.get("value", "") for t in row.turns if isinstance(t, dict)), "")
    return _key(first.replace(IMAGE_TOKEN, ""))


def duplicate_questions(rows: Sequence[tuple[str, Instruction]]) -> list[int]:
    """Indices of rows repeating an earlier (image, kind, question) of the same slide."""
    seen: set[tuple[str, str, str]] = set()
    repeated = []
    for index, (image, row) in enumerate(rows):
        key = (image, row.kind, question_key(row))
        if key in seen:
            repeated.append(index)
        seen.add(key)
    return repeated


@dataclass(frozen=True)
class LetterBalance:
    """The answer-letter distribution of a slide's multiple-choice questions."""

    counts: dict[str, int]
    passed: bool
    message: str


def letter_balance(
    letters: Sequence[str],
    *,
    max_share: float = MAX_LETTER_SHARE,
    min_questions: int = LETTER_BALANCE_MIN_QUESTIONS,
) -> LetterBalance:
    """Whether no letter answers more than ``max_share`` of the questions.

    Below ``min_questions`` a share says little (3 questions give one letter 33 %), so
    there the test is that no letter exceeds an even split by more than one question.
    """
    counts = Counter(letters)
    full = {letter: counts.get(letter, 0) for letter in LETTERS}
    total = sum(full.values())
    if total == 0:
        return LetterBalance(full, True, "no multiple-choice questions")
    top_letter, top = max(full.items(), key=lambda item: item[1])
    if total >= min_questions:
        passed = top / total <= max_share
        limit = f"at most {max_share:.0%}"
    else:
        even = -(-total // N_OPTIONS)
        passed = top <= even + 1
        limit = f"at most {even + 1} of {total} (fewer than {min_questions} questions)"
    message = f"letter {top_letter} answers {top} of {total} questions ({top / total:.0%}); {limit}"
    return LetterBalance(full, passed, message)


def quarantine_shares(failed_rules: Sequence[Sequence[str]]) -> dict[str, float]:
    """Share of rows failing each rule (every rule present, zeros included)."""
    total = len(failed_rules)
    counts = Counter(rule for rules in failed_rules for rule in set(rules))
    return {name: (counts[name] / total if total else 0.0) for name in RULE_NAMES}


@dataclass(frozen=True)
class SlideGate:
    """Whether a slide's instructions may be exported, and the message that says why."""

    passed: bool
    quarantined: int
    total: int
    message: str


def gate_slide(
    slide_id: str, failed_rules: Sequence[Sequence[str]], *, max_share: float = MAX_QUARANTINE_SHARE
) -> SlideGate:
    """A slide whose rows mostly fail is blocked; the message names the slide and the rules."""
    total = len(failed_rules)
    quarantined = sum(1 for rules in failed_rules if rules)
    share = quarantined / total if total else 0.0
    if share <= max_share:
        return SlideGate(
            True,
            quarantined,
            total,
            f"slide {slide_id!r}: {quarantined} of {total} "
            f"instructions quarantined ({share:.0%}, limit {max_share:.0%})",
        )
    top = Counter(rule for rules in failed_rules for rule in set(rules)).most_common(3)
    named = ", ".join(f"{rule} ({count})" for rule, count in top)
    return SlideGate(
        False,
        quarantined,
        total,
        f"slide {slide_id!r}, stage instructions: {quarantined} of {total} instructions "
        f"({share:.0%}) fail a rule, over the {max_share:.0%} limit; most failed: {named}. "
        "Fix: inspect `SELECT failed_rules, failure_reasons FROM instructions WHERE slide_id = "
        f"'{slide_id}' AND status = 'quarantined'`, fix the backend or its prompt, and "
        "re-materialize instructions for this slide",
    )
