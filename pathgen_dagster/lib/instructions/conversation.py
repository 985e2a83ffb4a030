"""Grounded conversations: 2-4 question-answer turns about one patch, in LLaVA's shape.

A conversation plan picks the topics (an overview first, then cells, nuclei, stroma,
spaces or infiltrate) and a wording for each question. The grounded backend answers each
question with the sentences of the patch's revised description (the text that passed the
caption gates) that speak about the topic's bands; where the description says nothing
about a topic, with the sentence the verbaliser writes from the measured facts. A model
backend answers the same questions (:mod:`.agent`); either way every answer goes through
the same rules (:mod:`.rules`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.instructions.questions import (
    TOPIC_BANDS,
    Question,
    conversation_question,
    pick,
)
from pathgen_dagster.lib.quality.fidelity import unsupported_claims
from pathgen_dagster.lib.selection.facts import MorphologyFacts

IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"
MIN_TURNS, MAX_TURNS = 2, 4


@dataclass(frozen=True)
class PairInput:
    """What the instruction stage knows about one training pair."""

    pair_id: str
    patch_id: str
    facts: MorphologyFacts
    revised_description: str
    image_sha256: str
    image_jpeg: bytes | None = None


@dataclass(frozen=True)
class ConversationPlan:
    """The questions of one conversation, their topics and the grounded answers."""

    topics: tuple[str, ...]
    questions: tuple[Question, ...]
    grounded_answers: tuple[str, ...]
    sources: tuple[str, ...]  # per answer: "revised_description" or "measured_facts"

    def grounding(self) -> list[str]:
        """What grounds each grounded answer, as 'turn n: topic <- source'."""
        return [
            f"turn {i}: {topic} <- {source}"
            for i, (topic, source) in enumerate(zip(self.topics, self.sources, strict=True))
        ]


def support_text(revised_description: str, facts: MorphologyFacts) -> str:
    """Text that may support an answer: the revised description and the measured facts."""
    return f"{revised_description} {verbalize.facts_sentence(facts)}"


def topic_sentences(pair: PairInput, topic: str, used: frozenset[str] = frozenset()) -> tuple[list[str], str]:
    """Sentences that answer ``topic`` and where they come from.

    From the revised description when it speaks about the topic's bands (source
    ``revised_description``), else the verbaliser's sentence from the measured facts
    (``measured_facts``) if the description or the facts support its every word (the
    answers_faithful rule); none when neither says anything (e.g. nuclei too few to judge).
    Sentences about the topic alone are preferred to summaries of everything, and
    sentences in ``used`` (earlier answers) are not repeated.
    """
    bands = set(TOPIC_BANDS[topic])

    def ranked(sentences: list[str]) -> list[str]:
        scored = []
        for sentence in sentences:
            claimed = {claim.claim for claim in verbalize.read_claims(sentence)}
            if claimed & bands and sentence not in used:
                scored.append((len(claimed - bands), sentence))
        return [s for _, s in sorted(scored, key=lambda item: item[0])]

    sentences = verbalize.split_sentences(pair.revised_description)
    described = ranked(sentences)
    if topic == "overview":
        # The description's opening sentence and its first claim-bearing one.
        claiming = [s for s in sentences if verbalize.read_claims(s)]
        return list(dict.fromkeys(sentences[:1] + claiming[:1])), "revised_description"
    if described:
        return described[:1], "revised_description"
    measured = verbalize.describe(pair.facts, tissue_site=None, seed=f"{pair.patch_id}:{topic}")
    support = support_text(pair.revised_description, pair.facts)
    answers = [
        s for s in ranked(verbalize.split_sentences(measured)) if not unsupported_claims(s, support)
    ]
    return answers[:1], "measured_facts"


def plan(pair: PairInput, *, min_turns: int = MIN_TURNS, max_turns: int = MAX_TURNS) -> ConversationPlan:
    """The conversation for one pair: an overview, then topics with something to say.

    The number of turns (``min_turns``..``max_turns``) and the order of the later topics
    are chosen by a hash of the pair id; topics without an answering sentence (no nuclear
    detail on a patch with few nuclei) are skipped.
    """
    seed = pair.pair_id
    later = [t for t in TOPIC_BANDS if t != "overview"]
    later.sort(key=lambda t: pick(range(1 << 30), seed, f"order:{t}"))
    turns = min_turns + pick(range(max_turns - min_turns + 1), seed, "turns")
    topics, answers, sources = [], [], []
    used: set[str] = set()
    for topic in ["overview", *later]:
        if len(topics) == turns:
            break
        sentences, source = topic_sentences(pair, topic, frozenset(used))
        sentences = [s for s in sentences if s not in used]
        if sentences:
            used.update(sentences)
            topics.append(topic)
            answers.append(" ".join(sentences))
            sources.append(source)
    questions = tuple(conversation_question(t, seed, str(i)) for i, t in enumerate(topics))
    return ConversationPlan(tuple(topics), questions, tuple(answers), tuple(sources))


def llava_turns(questions: list[str], answers: list[str]) -> list[dict[str, str]]:
    """LLaVA ``conversations``: human/gpt alternating, ``<image>`` opening the first turn."""
    turns = []
    for index, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        value = f"{IMAGE_TOKEN}\n{question}" if index == 0 else question
        turns += [{"from": HUMAN, "value": value}, {"from": GPT, "value": answer}]
    return turns
