"""Multiple-choice design: four statements, exactly one consistent with the measurements.

Statements are sentences the grounded verbaliser writes (:func:`verbalize.describe`) for
the patch's own facts and for counterfactual facts in which one band has another label
("cellularity low" where the patch measured "high"). Which statements are true and which
are wrong is then decided by the quality stage's claims-vs-facts table
(:func:`fidelity.grounding_contradictions`, which extends ``verbalize.contradictions``),
never by how the statement was made: a distractor is a statement that table says the
measured facts contradict, the correct option one it finds claims in and no contradiction.
So "wrong" means measurably wrong, and the design depends on the verbaliser's public
functions only, not on its exact wording.

Answer letters are assigned across a slide in blocks of four, each block a permutation of
A-D chosen by a hash: every letter gets a quarter of the questions (within one per letter).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.instructions.questions import (
    ANSWER_INSTRUCTION,
    MULTIPLE_CHOICE_FOCUS,
    Question,
    multiple_choice_question,
    pick,
)
from pathgen_dagster.lib.quality.fidelity import grounding_contradictions
from pathgen_dagster.lib.selection.facts import BANDS, MorphologyFacts

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
N_OPTIONS = len(LETTERS)


@dataclass(frozen=True)
class Statement:
    """One candidate option: a sentence, the band it was written about, and its verdict.

    Attributes:
        text: the sentence.
        band: the band of MorphologyFacts the sentence was written to state.
        label: the band label it states.
        contradictions: what the claims-vs-facts table says is wrong with it (empty for a
            statement consistent with the measurements).
    """

    text: str
    band: str
    label: str
    contradictions: tuple[str, ...]

    @property
    def consistent(self) -> bool:
        return not self.contradictions


@dataclass(frozen=True)
class MultipleChoice:
    """One multiple-choice item: stem, four options, the letter of the consistent one."""

    question: Question
    options: tuple[str, ...]
    answer_letter: str
    grounding: str  # the measured fact behind the correct option
    correct: Statement
    distractors: tuple[Statement, ...]

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer_letter)]

    def prompt(self) -> str:
        """The human turn after ``<image>``: stem, lettered options, answer instruction."""
        lines = [self.question.text]
        lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, self.options, strict=True)]
        return "\n".join([*lines, ANSWER_INSTRUCTION])


def measured_fact(facts: MorphologyFacts, band: str) -> str:
    """'cellularity = high (nuclear_fraction 0.31)': a band label and the number behind it."""
    measure = BANDS[band].measure
    return f"{band} = {getattr(facts, band)} ({measure} {getattr(facts, measure):.3g})"


def statements(facts: MorphologyFacts, *, seed: str) -> list[Statement]:
    """Candidate options about every band and label, each judged against ``facts``.

    For each (band, label), the shortest sentence of ``describe`` (for the facts with that
    label) that claims the band; sentences no claim is read from are left out, as are
    statements about a band the facts cannot assess (they are unsupported, not wrong).
    """
    found: dict[str, Statement] = {}
    for band, spec in BANDS.items():
        for label in spec.labels:
            counterfactual = dataclasses.replace(facts, **{band: label})
            text = verbalize.describe(counterfactual, tissue_site=None, seed=f"{seed}:{band}:{label}")
            candidates = [
                sentence
                for sentence in verbalize.split_sentences(text)
                if any(c.claim == band and label in c.labels for c in verbalize.read_claims(sentence))
            ]
            if not candidates:
                continue
            sentence = min(candidates, key=lambda s: (len(verbalize.read_claims(s)), len(s)))
            verdict = tuple(grounding_contradictions(sentence, facts))
            true_label = label == getattr(facts, band)
            if true_label != (not verdict):
                continue  # e.g. a band the facts cannot assess: neither right nor wrong
            if verdict and not any("_contradicted]" in reason for reason in verdict):
                continue  # unsupported (unassessable, unmeasured), not measurably wrong
            found.setdefault(sentence, Statement(sentence, band, label, verdict))
    return list(found.values())


def balanced_letters(count: int, *, seed: str) -> list[str]:
    """``count`` answer letters, each block of four a hashed permutation of A-D."""
    letters: list[str] = []
    for block in range(0, count, N_OPTIONS):
        order = sorted(
            LETTERS, key=lambda letter: hashlib.sha256(f"{seed}:{block}:{letter}".encode()).digest()
        )
        letters += order
    return letters[:count]


def design(
    facts: MorphologyFacts,
    *,
    seed: str,
    item: int,
    answer_letter: str,
    pool: list[Statement] | None = None,
) -> MultipleChoice | None:
    """The ``item``-th multiple-choice question of a patch, or None when it cannot be built.

    The correct statement rotates over the patch's consistent statements (item 0 about one
    band, item 1 about the next); the focus (nuclei, tissue, any) follows the correct
    band. Distractors are contradicted statements of that focus, the other labels of the
    correct band first (the closest wrong answers), then other bands in hashed order; the
    focus widens to every band when it holds fewer than three.

    Args:
        facts: the patch's measured morphology.
        seed: the patch id (wording and choices).
        item: which question of the patch (0, 1, ...).
        answer_letter: where the correct option goes (see :func:`balanced_letters`).
        pool: precomputed :func:`statements` of the patch.
    """
    pool = statements(facts, seed=seed) if pool is None else pool
    consistent = sorted((s for s in pool if s.consistent), key=lambda s: list(BANDS).index(s.band))
    wrong = [s for s in pool if not s.consistent]
    if not consistent:
        return None
    correct = consistent[(pick(consistent, seed, "mc-start") + item) % len(consistent)]
    focus = next(name for name in ("nuclei", "tissue") if correct.band in MULTIPLE_CHOICE_FOCUS[name])
    in_focus = [s for s in wrong if s.band in MULTIPLE_CHOICE_FOCUS[focus]]
    if len(in_focus) < N_OPTIONS - 1:
        focus, in_focus = "any", wrong
    if len(in_focus) < N_OPTIONS - 1:
        return None
    ranked = sorted(
        in_focus,
        key=lambda s: (
            s.band != correct.band,
            hashlib.sha256(f"{seed}:{item}:{s.text}".encode()).digest(),
        ),
    )
    distractors = tuple(ranked[: N_OPTIONS - 1])
    options = [s.text for s in distractors]
    options.insert(LETTERS.index(answer_letter), correct.text)
    return MultipleChoice(
        question=multiple_choice_question(focus, seed, item),
        options=tuple(options),
        answer_letter=answer_letter,
        grounding=measured_fact(facts, correct.band),
        correct=correct,
        distractors=distractors,
    )
