"""A slide's PathGen-Instruct rows: conversations and multiple-choice items, judged.

:func:`build_slide` is the stage in one call: plan a conversation per pair, have it
answered (grounded, or a model through :class:`.agent.InstructionAgent`), design the
multiple-choice items with balanced letters, judge every row (:mod:`.rules`), mark
repeated questions, and return rows whose ``status`` is ``ok`` or ``quarantined``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pathgen_dagster.lib.captions.agents import (
    AgentConfig,
    AgentOutput,
    ModelSession,
    PatchInput,
    ResponseCache,
    run_agent,
)
from pathgen_dagster.lib.instructions.agent import (
    AGENT_NAME,
    ANSWERS_RESPONSE_FORMAT,
    InstructionAgent,
)
from pathgen_dagster.lib.instructions.conversation import (
    MAX_TURNS,
    MIN_TURNS,
    ConversationPlan,
    PairInput,
    llava_turns,
    plan,
)
from pathgen_dagster.lib.instructions.multiple_choice import (
    balanced_letters,
    design,
    statements,
)
from pathgen_dagster.lib.instructions.questions import template_catalogue
from pathgen_dagster.lib.instructions.rules import (
    LETTER_BALANCE_MIN_QUESTIONS,
    MAX_LETTER_SHARE,
    MAX_QUARANTINE_SHARE,
    RULESET_VERSION,
    Context,
    Instruction,
    duplicate_questions,
    judge,
)

MULTIPLE_CHOICE_MODEL_ID = "grounded-multiple-choice-v1"


@dataclass(frozen=True)
class InstructionConfig:
    """Knobs of the instruction stage (defaults written once, here).

    Attributes:
        conversations_per_pair: conversations per pair (0 or 1: one plan per image).
        multiple_choice_per_pair: multiple-choice items per pair (each about another band).
        min_turns, max_turns: question-answer turns of a conversation.
        max_quarantine_share: a slide with a larger share of quarantined rows is blocked.
        max_letter_share: no answer letter above this share (slides with enough items).
        letter_balance_min_questions: items from which ``max_letter_share`` applies.
        temperature, top_p, seed, max_attempts, fallback_to_grounded, max_tokens: the
            model backend's sampling and retries (as the caption agents').
    """

    conversations_per_pair: int = 1
    multiple_choice_per_pair: int = 2
    min_turns: int = MIN_TURNS
    max_turns: int = MAX_TURNS
    max_quarantine_share: float = MAX_QUARANTINE_SHARE
    max_letter_share: float = MAX_LETTER_SHARE
    letter_balance_min_questions: int = LETTER_BALANCE_MIN_QUESTIONS
    temperature: float = 0.3
    top_p: float = 0.9
    seed: int = 0
    max_attempts: int = 3
    fallback_to_grounded: bool = True
    max_tokens: int = 384

    def agent(self) -> AgentConfig:
        return AgentConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            max_attempts=self.max_attempts,
            fallback_to_grounded=self.fallback_to_grounded,
            max_tokens={AGENT_NAME: self.max_tokens},
        )


@dataclass
class InstructionRow:
    """One row of ``instructions`` before the slide-level columns are added."""

    instruction_id: str
    pair_id: str
    patch_id: str
    image_sha256: str
    kind: str
    turns: list[dict]
    question: str | None
    options: list[str]
    answer_letter: str | None
    answer_text: str | None
    grounding: list[str]
    question_template_ids: list[str]
    backend: str
    model_id: str
    template_id: str
    template_hash: str
    sampling: dict
    attempts: int
    cache_hit: bool
    generation_status: str
    generation_failure: str | None
    failed_rules: list[str] = field(default_factory=list)
    failure_reasons: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "quarantined" if self.failed_rules else "ok"

    @property
    def instruction(self) -> Instruction:
        return Instruction(
            self.kind,  # type: ignore[arg-type]
            self.turns,
            self.question,
            tuple(self.options),
            self.answer_letter,
        )


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CATALOGUE_HASH = _hash(json.dumps(template_catalogue(), sort_keys=True))


def conversation_rows(
    pairs: Sequence[PairInput],
    *,
    session: ModelSession | None,
    cache: ResponseCache,
    config: InstructionConfig = InstructionConfig(),
    response_format: dict | None = ANSWERS_RESPONSE_FORMAT,
) -> list[InstructionRow]:
    """One conversation per pair: planned questions, answered grounded or by the model."""
    if config.conversations_per_pair == 0 or not pairs:
        return []
    plans = {p.patch_id: plan(p, min_turns=config.min_turns, max_turns=config.max_turns) for p in pairs}
    by_patch = {p.patch_id: p for p in pairs}
    agent = InstructionAgent(plans, by_patch, response_format=response_format)
    items = [PatchInput(patch_id=p.patch_id, facts=p.facts, image_jpeg=p.image_jpeg) for p in pairs]
    outputs = run_agent(agent, items, session=session, cache=cache, config=config.agent())
    return [_conversation_row(by_patch[o.patch_id], plans[o.patch_id], o) for o in outputs]


def _conversation_row(pair: PairInput, plan_: ConversationPlan, output: AgentOutput) -> InstructionRow:
    answers = json.loads(output.text)["answers"] if output.text else []
    questions = [q.text for q in plan_.questions]
    turns = llava_turns(questions, answers) if len(answers) == len(questions) else []
    model_answered = output.status == "ok" and output.backend != "grounded"
    grounding = (
        [f"turn {i}: {t} <- model answer" for i, t in enumerate(plan_.topics)]
        if model_answered
        else plan_.grounding()
    )
    return InstructionRow(
        instruction_id=f"{pair.pair_id}_conv0",
        pair_id=pair.pair_id,
        patch_id=pair.patch_id,
        image_sha256=pair.image_sha256,
        kind="conversation",
        turns=turns,
        question=None,
        options=[],
        answer_letter=None,
        answer_text=None,
        grounding=grounding,
        question_template_ids=[q.template_id for q in plan_.questions],
        backend=output.backend,
        model_id=output.model_id,
        template_id=output.template_id,
        template_hash=output.template_hash if model_answered else _CATALOGUE_HASH,
        sampling=output.sampling,
        attempts=output.attempts,
        cache_hit=output.cache_hit,
        generation_status=output.status,
        generation_failure=output.failure_reason,
    )


def multiple_choice_rows(
    slide_id: str, pairs: Sequence[PairInput], *, config: InstructionConfig = InstructionConfig()
) -> list[InstructionRow]:
    """``multiple_choice_per_pair`` items per pair, answer letters balanced over the slide."""
    letters = iter(balanced_letters(len(pairs) * config.multiple_choice_per_pair, seed=slide_id))
    letter = next(letters, None)
    rows = []
    for pair in pairs:
        pool = statements(pair.facts, seed=pair.patch_id)
        for item in range(config.multiple_choice_per_pair):
            built = design(pair.facts, seed=pair.patch_id, item=item, answer_letter=letter, pool=pool)
            if built is None:
                continue
            letter = next(letters, None)
            rows.append(
                InstructionRow(
                    instruction_id=f"{pair.pair_id}_mc{item}",
                    pair_id=pair.pair_id,
                    patch_id=pair.patch_id,
                    image_sha256=pair.image_sha256,
                    kind="multiple_choice",
                    turns=llava_turns([built.prompt()], [built.answer_letter]),
                    question=built.question.text,
                    options=list(built.options),
                    answer_letter=built.answer_letter,
                    answer_text=built.answer_text,
                    grounding=[built.grounding, *(d.contradictions[0] for d in built.distractors)],
                    question_template_ids=[built.question.template_id],
                    backend="grounded",
                    model_id=MULTIPLE_CHOICE_MODEL_ID,
                    template_id=built.question.template_id,
                    template_hash=_CATALOGUE_HASH,
                    sampling={"seed": pair.patch_id, "item": item},
                    attempts=0,
                    cache_hit=False,
                    generation_status="ok",
                    generation_failure=None,
                )
            )
    return rows


def judge_rows(rows: list[InstructionRow], pairs: Sequence[PairInput]) -> list[InstructionRow]:
    """Fill every row's failed rules and reasons (row rules, then repeated questions)."""
    contexts = {p.patch_id: Context(p.facts, p.revised_description) for p in pairs}
    for row in rows:
        failures = judge(row.instruction, contexts[row.patch_id])
        if row.generation_status == "failed":
            failures.insert(0, ("generation_failed", row.generation_failure or "no text"))
        row.failed_rules = [rule for rule, _ in failures]
        row.failure_reasons = [f"{rule}: {reason}" for rule, reason in failures]
    for index in duplicate_questions([(r.image_sha256, r.instruction) for r in rows]):
        rows[index].failed_rules.append("duplicate_question")
        rows[index].failure_reasons.append(
            "duplicate_question: the same question was already asked about this image"
        )
    return rows


def build_slide(
    slide_id: str,
    pairs: Sequence[PairInput],
    *,
    session: ModelSession | None,
    cache: ResponseCache,
    config: InstructionConfig = InstructionConfig(),
) -> list[InstructionRow]:
    """Every instruction row of one slide, judged, in (pair, kind, item) order."""
    pairs = sorted(pairs, key=lambda p: p.pair_id)
    rows = conversation_rows(pairs, session=session, cache=cache, config=config)
    rows += multiple_choice_rows(slide_id, pairs, config=config)
    rows.sort(key=lambda r: r.instruction_id)
    return judge_rows(rows, pairs)


__all__ = ["RULESET_VERSION", "InstructionConfig", "InstructionRow", "build_slide"]
