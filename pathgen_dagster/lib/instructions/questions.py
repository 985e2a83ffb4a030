"""Question wordings of PathGen-Instruct: what a pathologist asks about a patch.

Every wording has a stable template id (``<topic>.<n>``) recorded on its row, so the
variety of questions is measurable (distinct template ids per 100 items). A wording is
chosen per patch and turn with a hash of (seed, slot), as the grounded verbaliser picks
its sentences: re-runs are identical, neighbouring patches are asked differently.

Questions assert nothing about the patch (no band wording, no finding): the rules check
that ``verbalize.read_claims`` finds no claim in them, so a question never gives its
answer away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

# Conversation topics and the bands of MorphologyFacts whose sentences answer them.
TOPIC_BANDS: dict[str, tuple[str, ...]] = {
    "overview": ("cellularity", "nuclear_size", "pleomorphism", "stroma", "lumen_or_fat"),
    "cellularity": ("cellularity",),
    "nuclei": ("nuclear_size", "pleomorphism"),
    "stroma": ("stroma",),
    "spaces": ("lumen_or_fat",),
    "inflammation": ("inflammation_hint",),
}

CONVERSATION_QUESTIONS: dict[str, tuple[str, ...]] = {
    "overview": (
        "What does this H&E-stained patch show?",
        "Can you describe the tissue in this image?",
        "Give a short morphological description of this field.",
        "What are the main histological features of this patch?",
        "How would you describe this section at a glance?",
    ),
    "cellularity": (
        "How cellular is the tissue?",
        "Would you call this field crowded or sparse in cells?",
        "What can you say about the density of cells here?",
        "How closely are the cells packed in this field?",
    ),
    "nuclei": (
        "What do the nuclei look like?",
        "Describe the size of the nuclei and how much they vary.",
        "How uniform are the nuclei in this patch?",
        "What can you tell about nuclear size and pleomorphism?",
    ),
    "stroma": (
        "How much stroma is there between the cells?",
        "What about the eosinophilic component of the tissue?",
        "Is the stroma a large part of this field?",
        "How would you characterise the pink, eosin-stained material here?",
    ),
    "spaces": (
        "Are there clear spaces, such as lumina or fat, in the field?",
        "Is the tissue solid, or are there open spaces within it?",
        "What about white space in this patch?",
        "Do you see lumina, fat or other empty areas?",
    ),
    "inflammation": (
        "Is there an inflammatory infiltrate?",
        "Do you see a population of lymphocyte-like nuclei?",
        "Are immune cells prominent in this field?",
        "Is there evidence of a lymphocytic component here?",
    ),
}

# Multiple-choice stems by focus: which bands the four options speak about.
MULTIPLE_CHOICE_FOCUS: dict[str, tuple[str, ...]] = {
    "any": (
        "cellularity",
        "nuclear_size",
        "pleomorphism",
        "stroma",
        "lumen_or_fat",
        "inflammation_hint",
    ),
    "nuclei": ("nuclear_size", "pleomorphism"),
    "tissue": ("cellularity", "stroma", "lumen_or_fat", "inflammation_hint"),
}
MULTIPLE_CHOICE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "any": (
        "Which of the following statements describes this patch correctly?",
        "Which statement is consistent with what this H&E image shows?",
        "Select the description that fits this field.",
        "Which of these observations is true for this patch?",
        "Only one of the following statements is accurate for this image. Which one?",
    ),
    "nuclei": (
        "Which statement about the nuclei in this patch is correct?",
        "Which of the following describes the nuclei in this field?",
        "Choose the accurate statement about nuclear features here.",
    ),
    "tissue": (
        "Which statement about the tissue composition of this patch is correct?",
        "Which of the following describes the architecture of this field?",
        "Choose the accurate statement about the cells and stroma here.",
    ),
}
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Question:
    """One question wording and its template id (``<topic>.<n>``)."""

    template_id: str
    text: str


def pick(options: Sequence[str], seed: str, slot: str) -> int:
    """Index of one of ``options`` chosen by a hash of (seed, slot): stable and varied."""
    digest = hashlib.sha256(f"{seed}\x1f{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(options)


def conversation_question(topic: str, seed: str, slot: str) -> Question:
    """The wording of a conversation question about ``topic`` for one patch and turn."""
    options = CONVERSATION_QUESTIONS[topic]
    index = pick(options, seed, f"{topic}:{slot}")
    return Question(f"{topic}.{index}", options[index])


def multiple_choice_question(focus: str, seed: str, item: int) -> Question:
    """The stem of the ``item``-th multiple-choice question with ``focus`` about one patch.

    Consecutive items of a patch take consecutive wordings, so one image is never asked
    the same stem twice while a focus has wordings left.
    """
    options = MULTIPLE_CHOICE_QUESTIONS[focus]
    index = (pick(options, seed, f"mc:{focus}") + item) % len(options)
    return Question(f"mc.{focus}.{index}", options[index])


def template_catalogue() -> dict[str, str]:
    """Every question template id and its wording (for docs and the variety measure)."""
    catalogue = {
        f"{topic}.{i}": text
        for topic, texts in CONVERSATION_QUESTIONS.items()
        for i, text in enumerate(texts)
    }
    catalogue |= {
        f"mc.{focus}.{i}": text
        for focus, texts in MULTIPLE_CHOICE_QUESTIONS.items()
        for i, text in enumerate(texts)
    }
    return catalogue
