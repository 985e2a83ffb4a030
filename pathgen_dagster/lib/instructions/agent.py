"""The instruction agent: a model answers a conversation's questions, strictly checked.

It is one more :class:`~pathgen_dagster.lib.captions.agents.Agent`, run by the caption
agents' :func:`~pathgen_dagster.lib.captions.agents.run_agent` on the same client and
response cache: rounds of requests (vLLM batches them), a cache key over model, template
hash, messages and sampling, a new seed per attempt, and the grounded answers with
``status = fallback`` and the rejection reasons when every attempt was rejected.

The questions come from the conversation plan (varied wording, chosen per patch); the
model is asked for ``{"answers": [str, ...]}``, one answer per question, with the revised
description and the measured facts (text models) or the patch image as well (vision
models). Constrained decoding (``json_schema``) is asked for as the revise agent does; the
answer is still parsed strictly (one object, exact keys, one string per question) and
every answer must pass the conversation rules of :mod:`.rules` (screens, grounding,
faithfulness), or the attempt is rejected with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from pathgen_dagster.lib.captions.agent_prompts import PromptTemplate
from pathgen_dagster.lib.captions.agents import Agent, PatchInput, Rejected, facts_block
from pathgen_dagster.lib.captions.edit_log import EditLogError, _check_keys, _load_object
from pathgen_dagster.lib.instructions.conversation import ConversationPlan, PairInput, llava_turns
from pathgen_dagster.lib.instructions.rules import Context, Instruction, judge

AGENT_NAME = "instruction"
ANSWER_KEYS = ("answers",)

ANSWERS_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answers": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": 4,
        }
    },
    "required": list(ANSWER_KEYS),
    "additionalProperties": False,
}
ANSWERS_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "answers", "strict": True, "schema": ANSWERS_JSON_SCHEMA},
}

_RULES = """\
You are a pathologist teaching a trainee about one H&E-stained patch.
Answer each numbered question in one or two plain sentences, in order.
Say only what the {grounding} support; never name a diagnosis, necrosis, mitoses or any
finding that was not measured, and do not ask questions back.
Reply with one JSON object and nothing else: {{"answers": ["<answer 1>", "<answer 2>", ...]}}
with exactly one answer per question."""

INSTRUCTION_FACTS = PromptTemplate(
    template_id="instruction.facts",
    version=1,
    system=_RULES.replace("{grounding}", "description and the measured facts"),
    user=("MEASURED FACTS:\n{facts}\n\nDESCRIPTION:\n{description}\n\nQUESTIONS ({count}):\n{questions}"),
)
INSTRUCTION_VISION = PromptTemplate(
    template_id="instruction.vision",
    version=1,
    system=_RULES.replace("{grounding}", "image, the description and the measured facts"),
    user=("MEASURED FACTS:\n{facts}\n\nDESCRIPTION:\n{description}\n\nQUESTIONS ({count}):\n{questions}"),
    needs_image=True,
)


def parse_answers(text: str, *, expected: int) -> list[str]:
    """The answers in a model's reply; raises Rejected with the precise reason.

    One JSON object (bare or in one ```json fence), exactly the key ``answers``, a list
    of ``expected`` non-empty strings, no duplicate keys.
    """
    try:
        obj = _load_object(text)
        _check_keys(obj, ANSWER_KEYS, "answer")
    except EditLogError as error:
        raise Rejected(f"malformed JSON: {error}") from None
    answers = obj["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise Rejected("malformed JSON: 'answers' must be a list of strings")
    if len(answers) != expected:
        raise Rejected(f"malformed JSON: {len(answers)} answers for {expected} questions")
    if not all(a.strip() for a in answers):
        raise Rejected("malformed JSON: an answer is empty")
    return [" ".join(a.split()) for a in answers]


class InstructionAgent(Agent):
    """Answers each pair's planned conversation; the grounded answers are its fallback.

    Args:
        plans: the conversation plan of each pair, by patch id.
        pairs: the pairs, by patch id (revised description and facts for the prompt).
        response_format: what the server is asked to enforce: the answers' JSON schema
            (default); ``{"type": "json_object"}`` (any object) or None (free text) only to
            exercise the strict parser with a small model's answers.
    """

    name = AGENT_NAME

    def __init__(
        self,
        plans: dict[str, ConversationPlan],
        pairs: dict[str, PairInput],
        *,
        response_format: dict | None = ANSWERS_RESPONSE_FORMAT,
    ):
        self.plans, self.pairs = plans, pairs
        self.response_format = response_format

    def grounded(self, item: PatchInput):
        return json.dumps({"answers": list(self.plans[item.patch_id].grounded_answers)}), ()

    def template(self, item, session, attempt, last):
        return INSTRUCTION_VISION if session.vision and item.image_jpeg else INSTRUCTION_FACTS

    def values(self, item, config, last):
        plan = self.plans[item.patch_id]
        return {
            "facts": facts_block(item.facts),
            "description": self.pairs[item.patch_id].revised_description,
            "count": len(plan.questions),
            "questions": "\n".join(f"{i + 1}. {q.text}" for i, q in enumerate(plan.questions)),
        }

    def accept(self, item, text):
        plan = self.plans[item.patch_id]
        answers = parse_answers(text, expected=len(plan.questions))
        pair = self.pairs[item.patch_id]
        row = Instruction("conversation", llava_turns([q.text for q in plan.questions], answers))
        failures = judge(row, Context(item.facts, pair.revised_description))
        if failures:
            raise Rejected("; ".join(f"{rule}: {reason}" for rule, reason in failures[:2]))
        return json.dumps({"answers": answers}), ()
