"""Caption fidelity: what each caption is measured on, and the rules that judge it.

The original PathGen shipped captions unchecked: 69 % overflowed CLIP's 77-token window
and nothing flagged a caption that claimed more than its description. This module makes
every caption's fidelity measurable. It keeps two things apart, as datatrove and
Data-Juicer do:

* **measuring** (:func:`measure`, :func:`measure_slide`): every number and list a rule
  needs, computed once per caption and stored in the ``caption_quality`` table;
* **judging** (:func:`judge`): each rule in :data:`RULES` reads the measures and a
  :class:`FidelityConfig` and says pass or fail. A rule has a name, a severity and a
  version. A caption that fails any rule is quarantined: kept in ``caption_quality``
  with its reasons, left out of ``training_pairs``. ``severe`` failures also count
  towards the per-slide blocking gate (too many of them and the slide's training data is
  not built at all); ``warn`` failures do not.

Claims checked against the measured morphology use :func:`grounding_contradictions`:
the claims-vs-measurements table of :func:`pathgen_dagster.lib.captions.verbalize.contradictions`
extended by :data:`GROUNDING_RULES` below. Structure screens reuse the rule list of
:mod:`pathgen_dagster.lib.captions.screening` (the same rules the agents apply to model answers),
except its function-word test, which is meant for long descriptions (see
:func:`non_english`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pathgen_dagster.lib.captions import screening, verbalize
from pathgen_dagster.lib.captions.agent_prompts import TEMPLATES
from pathgen_dagster.lib.captions.edit_log import EditLogError, parse_revision
from pathgen_dagster.lib.captions.tokenizer import CLIP_CONTEXT_LENGTH, ClipTokenizer, get_tokenizer
from pathgen_dagster.lib.quality.evidence import Evidence, claim_disagreements
from pathgen_dagster.lib.quality.lexicon import Lexicon, Mention, get_lexicon
from pathgen_dagster.lib.selection.facts import BANDS, MorphologyFacts
from pathgen_dagster.lib.selection.text_encoder import encode_unique

RULESET_VERSION = "fidelity-2"
"""Bumped by hand when a rule's logic changes (each rule's ``version`` says which)."""

Severity = Literal["severe", "warn"]
AlignmentMode = Literal["minilm_facts", "clip"]
TextEncoder = Callable[[list[str]], np.ndarray]
"""Texts -> (n, d) float32 unit-length embeddings (the packaged MiniLM in production)."""


@dataclass(frozen=True)
class FidelityConfig:
    """Every threshold of the caption-quality rules and gates (PathGen defaults, written once).

    Attributes:
        max_clip_tokens: CLIP's text window, start and end tokens included.
        min_caption_words: a shorter caption says too little to train on.
        min_description_words: a shorter revised description is a stub.
        max_description_words: a longer one ran away (the agent asks for at most 120).
        min_alignment: lowest cosine between the MiniLM embeddings of the caption and of
            the patch's verbalised measured morphology (default, weight-free mode).
            Measured: grounded captions score 0.75-0.90 against their own patch, but also
            0.81-0.91 against another patch's facts, so this mode cannot tell patches
            apart (band-level truth is ``caption_grounded``'s job); it separates captions
            about the measured morphology from vacuous or off-topic text ("The slide shows
            cells." 0.18, unrelated text < 0.1; a generic H&E sentence 0.55).
        min_clip_score: lowest CLIP score (100 x cosine of image and caption embeddings)
            when a CLIP encoder is configured; PathGen-CLIP-style models give matched
            pairs 20-35.
        near_duplicate_similarity: MiniLM cosine at or above which two captions are near
            duplicates (paraphrases with the same findings score above 0.95).
        max_deleted_fraction: a revision that removes more than this share of the draft's
            words rewrote it rather than correcting it.
        max_severe_failure_rate: the blocking gate fails a slide when more than this share
            of its captions fail a severe rule.
        min_share_fitting_clip: the ``captions`` warning check wants at least this share
            of captions inside CLIP's window.
        max_agent_failure_rate: the ``captions`` warning check wants at most this share of
            rows that fell back to grounded text or failed.
        max_contradiction_rate: the ``descriptions`` warning check wants at most this share
            of descriptions that contradict the measured morphology.
    """

    max_clip_tokens: int = CLIP_CONTEXT_LENGTH
    min_caption_words: int = 5
    min_description_words: int = 15
    max_description_words: int = 200
    min_alignment: float = 0.30
    min_clip_score: float = 20.0
    near_duplicate_similarity: float = 0.95
    max_deleted_fraction: float = 0.6
    max_severe_failure_rate: float = 0.2
    min_share_fitting_clip: float = 0.95
    max_agent_failure_rate: float = 0.25
    max_contradiction_rate: float = 0.10


DEFAULT_CONFIG = FidelityConfig()


# ---------------------------------------------------------------------------------------
# Grounding: claims that the measured morphology contradicts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundingRule:
    """Asserting any of ``terms`` contradicts facts for which ``contradicts`` is true.

    Attributes:
        name: short id, used in the reason text.
        terms: canonical lexicon terms; a term also matches every term that implies it
            ("comedonecrosis" implies "necrosis"). Denied mentions ("no necrosis") never
            count.
        condition: the measured condition, in words, as the reason states it.
        contradicts: the condition on :class:`MorphologyFacts`.
        phrase: the terms must be asserted in this order, each at most two words after
            the previous (a degree word and its finding: "dense" + "lymphocytic
            infiltrate", "dense stroma with a lymphocytic infiltrate" does not match).
    """

    name: str
    terms: tuple[str, ...]
    condition: str
    contradicts: Callable[[MorphologyFacts], bool]
    phrase: bool = False


_LOWEST = {name: band.labels[0] for name, band in BANDS.items()}
_HIGHEST = {name: band.labels[-1] for name, band in BANDS.items()}
_LEXICON_TERM = {"granuloma": "granulomas"}  # verbalize finding name -> lexicon term

# verbalize.CLAIM_RULES reads band claims with regexes and verbalize.UNMEASURED_FINDINGS
# names findings no measurement can see. These rules extend that table where the
# lexicon knows more: its synonyms and implications ("increased cellularity",
# "comedonecrosis", "signet ring cells" -> mucin), a degree word on an infiltrate, and
# stromal reactions in scant stroma. Overlapping reports are dropped, so a claim both
# tables catch is reported once, with verbalize's reason.
# (While the infiltrate band is in findings.UNVALIDATED_BANDS, verbalize reports every
# asserted infiltrate itself, and the first rule finds nothing it does not.)
GROUNDING_RULES: tuple[GroundingRule, ...] = (
    GroundingRule(
        "dense_infiltrate_in_low_cellularity",
        ("densely packed", "lymphocytic infiltrate"),
        f"cellularity band is '{_LOWEST['cellularity']}' (lowest nuclear density), so no "
        "infiltrate is dense here",
        lambda f: f.cellularity == _LOWEST["cellularity"],
        phrase=True,
    ),
    GroundingRule(
        "high_cellularity_synonym_in_low_band",
        ("hypercellular",),
        f"cellularity band is '{_LOWEST['cellularity']}'",
        lambda f: f.cellularity == _LOWEST["cellularity"],
    ),
    GroundingRule(
        "low_cellularity_synonym_in_high_band",
        ("hypocellular",),
        f"cellularity band is '{_HIGHEST['cellularity']}'",
        lambda f: f.cellularity == _HIGHEST["cellularity"],
    ),
    GroundingRule(
        "unmeasured_finding_synonym",
        tuple(_LEXICON_TERM.get(name, name) for name in verbalize.UNMEASURED_FINDINGS),
        "no measurement here can see this finding (named through a lexicon synonym)",
        lambda f: True,
    ),
    GroundingRule(
        "stromal_reaction_in_scant_stroma",
        ("desmoplasia", "fibrosis"),
        f"stroma band is '{_LOWEST['stroma']}'",
        lambda f: f.stroma == _LOWEST["stroma"],
    ),
)
"""Claims-vs-measurements rules that extend ``verbalize.contradictions`` (documented in
``quality/README.md``)."""


def grounding_contradictions(
    text: str | None, facts: MorphologyFacts | None, *, lexicon: Lexicon | None = None
) -> list[str]:
    """Returns the claims in ``text`` that the measured ``facts`` contradict, as reasons.

    Each entry is ``"<phrase>: <reason>"``: first those of ``verbalize.contradictions``
    (the agents' own verification), then those of :data:`GROUNDING_RULES` whose phrase
    does not overlap one already reported (one claim, one entry). No facts, or no text,
    means nothing to contradict.
    """
    if not text or facts is None:
        return []
    pairs = verbalize.contradictions(text, facts)
    found = [f"{phrase}: {reason}" for phrase, reason in pairs]
    lowered = text.lower()
    taken: list[tuple[int, int]] = []
    for phrase, _ in pairs:
        start = lowered.find(phrase.lower())
        if start >= 0:
            taken.append((start, start + len(phrase)))
    lexicon = lexicon or get_lexicon()
    mentions = [m for m in lexicon.mentions(text) if not m.negated]
    for rule in GROUNDING_RULES:
        if not rule.contradicts(facts):
            continue
        if rule.phrase:
            span = _phrase_span(lexicon, text, mentions, rule.terms)
            spans = [span] if span else []
        else:
            spans = [(m.start, m.end) for m in mentions if _matches(lexicon, m.term, rule.terms)]
        for start, end in spans:
            if any(start < taken_end and taken_start < end for taken_start, taken_end in taken):
                continue
            taken.append((start, end))
            found.append(f"{text[start:end]}: {rule.condition} [{rule.name}]")
    return found


def _matches(lexicon: Lexicon, term: str, targets: Sequence[str]) -> bool:
    return term in targets or not lexicon.implied_terms(term).isdisjoint(targets)


_PHRASE_GAP = re.compile(r"^[\s-]*(?:[^\W\d_]+[\s-]+){0,2}$")
"""What may stand between the parts of a phrase rule: at most two words, no punctuation."""


def _phrase_span(
    lexicon: Lexicon, text: str, mentions: Sequence[Mention], terms: Sequence[str]
) -> tuple[int, int] | None:
    """The first span where ``terms`` are mentioned in order, each close to the previous."""
    for i, first in enumerate(mentions):
        if not _matches(lexicon, first.term, terms[:1]):
            continue
        end, j = first.end, i
        for term in terms[1:]:
            j += 1
            if j >= len(mentions) or not _matches(lexicon, mentions[j].term, (term,)):
                break
            if not _PHRASE_GAP.match(text[end : mentions[j].start]):
                break
            end = mentions[j].end
        else:
            return first.start, end
    return None


# ---------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionMeasures:
    """Everything the rules read about one caption, computed once.

    Structure details are ``None`` when the text is clean, else what was found.
    """

    patch_id: str
    caption: str | None
    caption_words: int
    clip_tokens: int
    paragraphs: int
    formatting: str | None
    ends_with_sentence_end: bool
    meta_language: str | None
    question: str | None
    non_english: str | None
    repetition: str | None
    off_topic: str | None
    description_words: int
    unsupported_claims: tuple[str, ...]
    contradictions: tuple[str, ...]
    description_contradictions: tuple[str, ...]
    evidence_disagreements: tuple[str, ...]
    alignment_score: float | None
    alignment_mode: AlignmentMode
    caption_key: str
    max_duplicate_similarity: float
    duplicate_of: str | None
    exact_duplicate: bool
    edit_log_error: str | None
    n_edits: int
    deleted_fraction: float


_SCREENS = {rule.name: rule.check for rule in screening.RULES}
# Meta phrases a summary agent adds on top of the description-agent screens: preambles
# that announce the caption instead of being one.
EXTRA_META_PHRASES: tuple[str, ...] = (
    "here is",
    "here's",
    "caption:",
    "summary:",
    "description:",
    "the description",
    "this caption",
    "the caption",
    "as requested",
    "i hope",
    "let me know",
    "please provide",
    "unable to",
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_SENTENCE_END = re.compile(r"[.!](?:[\"')\]]*)\s*\Z")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\n")
_KEY_NOISE = re.compile(r"[^a-z0-9]+")


def words(text: str | None) -> list[str]:
    """Lower-case words of ``text`` (letters only)."""
    return _WORD.findall(text.lower()) if text else []


def caption_key(text: str | None) -> str:
    """sha256 (16 hex) of the caption with case, punctuation and spacing folded away.

    Two captions with the same key are exact duplicates for training purposes.
    """
    folded = " ".join(_KEY_NOISE.sub(" ", (text or "").lower()).split())
    return hashlib.sha256(folded.encode()).hexdigest()[:16]


def deleted_fraction(draft: str | None, revised: str | None) -> float:
    """Share of the draft's words that the revision did not keep (0 = all kept)."""
    before, after = words(draft), words(revised)
    if not before:
        return 0.0
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    kept = sum(block.size for block in matcher.get_matching_blocks())
    return 1.0 - kept / len(before)


def edit_log_error(draft: str | None, revised: str | None, edits_json: str | None) -> str | None:
    """Why the revision's edit log is missing or malformed, or None when it is well formed.

    The log must be a JSON list of edits that :func:`~pathgen_dagster.lib.captions.edit_log.
    parse_revision` accepts against the draft (ops, spans found in the draft, reasons).
    """
    if draft is None or not draft.strip():
        return "no draft description to revise"
    if revised is None or not revised.strip():
        return "no revised description"
    if edits_json is None:
        return "edit log missing"
    try:
        edits = json.loads(edits_json)
    except json.JSONDecodeError as error:
        return f"edit log is not JSON: {error}"
    if not isinstance(edits, list):
        return f"edit log must be a JSON list, got {type(edits).__name__}"
    try:
        parse_revision(json.dumps({"revised": revised, "edits": edits}), draft=draft)
    except EditLogError as error:
        return str(error)
    return None


PROMPT_ECHO_WORDS = 5
"""A run of this many words copied from an agent prompt is an echo of the instructions."""


@functools.cache
def _prompt_ngrams() -> dict[tuple[str, ...], str]:
    """Every PROMPT_ECHO_WORDS-word run of the agent prompts (placeholders removed)."""
    ngrams: dict[tuple[str, ...], str] = {}
    for template in TEMPLATES.values():
        text = re.sub(r"\{[^{}]*\}", " ", f"{template.system}\n{template.user}")
        found = words(text)
        for i in range(len(found) - PROMPT_ECHO_WORDS + 1):
            ngrams.setdefault(tuple(found[i : i + PROMPT_ECHO_WORDS]), template.template_id)
    return ngrams


def prompt_echo(text: str) -> str | None:
    """The first run of words ``text`` copies from an agent prompt, or None.

    Small models answer "The most important cell and tissue features in this patch are
    ..." by repeating the summary instruction; PathGen's teacher prompt forbade such talk.
    """
    found, ngrams = words(text), _prompt_ngrams()
    for i in range(len(found) - PROMPT_ECHO_WORDS + 1):
        run = tuple(found[i : i + PROMPT_ECHO_WORDS])
        if run in ngrams:
            return f"echoes the {ngrams[run]} prompt: {' '.join(run)!r}"
    return None


def meta_language(text: str) -> str | None:
    """What makes ``text`` talk about itself or the prompt, or None."""
    for name in ("refusal_or_meta", "placeholder"):
        detail = _SCREENS[name](text, None)
        if detail:
            return detail
    lowered = text.lower().replace("\u2019", "'")
    found = [phrase for phrase in EXTRA_META_PHRASES if phrase in lowered]
    return f"contains {found[0]!r}" if found else prompt_echo(text)


MAX_FOREIGN_LETTER_SHARE = 0.05
"""Share of letters outside ASCII (micro signs excepted) above which text is not English."""


def non_english(text: str) -> str | None:
    """Why ``text`` is not English prose, or None.

    Script: as the screening rule, more than 5 % of letters outside ASCII (micro signs
    excepted). Words: a caption of six or more words with no English function word at all
    is another language or a keyword list. The screening rule's own word test (fewer than
    two function words in 12+ words) is meant for descriptions: it rejected 23 of 400
    well-formed telegraphic grounded captions ("Sparsely cellular breast tissue containing
    medium-sized nuclei showing marked pleomorphism, abundant eosinophilic stroma and
    prominent clear spaces."), so captions are held to the weaker test.
    """
    letters = [c for c in text if c.isalpha()]
    foreign = [c for c in letters if not c.isascii() and c not in "\u00b5\u03bc"]
    if letters and len(foreign) / len(letters) > MAX_FOREIGN_LETTER_SHARE:
        return f"{len(foreign)} of {len(letters)} letters are not ASCII"
    found = words(text)
    if len(found) >= 6 and not any(w in screening.ENGLISH_FUNCTION_WORDS for w in found):
        return "no English function words: another language or a keyword list, not prose"
    return None


def measure(
    caption_row: Mapping[str, object],
    revision_row: Mapping[str, object] | None,
    facts: MorphologyFacts | None,
    *,
    alignment_score: float | None = None,
    alignment_mode: AlignmentMode = "minilm_facts",
    duplicate: DuplicateMatch | None = None,
    evidence: Evidence | None = None,
    lexicon: Lexicon | None = None,
    tokenizer: ClipTokenizer | None = None,
) -> CaptionMeasures:
    """Returns every measure of one caption.

    Args:
        caption_row: a ``captions`` row (``patch_id``, ``caption``).
        revision_row: the patch's ``revised_descriptions`` row (``draft``, ``revised``,
            ``edits_json``), or None when the revise agent produced none.
        facts: the patch's measured morphology, or None when unknown.
        alignment_score: the caption's image-text alignment (see :func:`measure_slide`).
        alignment_mode: how ``alignment_score`` was computed.
        duplicate: the caption's duplicate match (see :func:`find_duplicates`).
        evidence: the patch's re-measurement by the second nucleus detector (recorded by
            the revise agent), or None when there is none.
        lexicon: pathology lexicon; the packaged one by default.
        tokenizer: CLIP tokenizer; the packaged one by default.
    """
    lexicon = lexicon or get_lexicon()
    tokenizer = tokenizer or get_tokenizer()
    caption = caption_row.get("caption")
    text = caption if isinstance(caption, str) else ""
    revision = revision_row or {}
    draft, revised = revision.get("draft"), revision.get("revised")
    revised_text = revised if isinstance(revised, str) else ""
    duplicate = duplicate or DuplicateMatch()
    stripped = text.strip()
    return CaptionMeasures(
        patch_id=str(caption_row["patch_id"]),
        caption=caption if isinstance(caption, str) else None,
        caption_words=len(words(text)),
        clip_tokens=tokenizer.count(text) if stripped else 0,
        paragraphs=len([p for p in _PARAGRAPH_BREAK.split(stripped) if p.strip()]),
        formatting=_SCREENS["formatting"](text, None),
        ends_with_sentence_end=bool(_SENTENCE_END.search(stripped)),
        meta_language=meta_language(text),
        question=_SCREENS["question"](text, None),
        non_english=non_english(text),
        repetition=_SCREENS["repetition"](text, None),
        off_topic=_SCREENS["off_topic"](text, None) if stripped else None,
        description_words=len(words(revised_text)),
        unsupported_claims=tuple(unsupported_claims(text, revised_text, lexicon=lexicon)),
        contradictions=tuple(grounding_contradictions(text, facts, lexicon=lexicon)),
        description_contradictions=tuple(grounding_contradictions(revised_text, facts, lexicon=lexicon)),
        evidence_disagreements=tuple(claim_disagreements(text, evidence)),
        alignment_score=alignment_score,
        alignment_mode=alignment_mode,
        caption_key=caption_key(text),
        max_duplicate_similarity=duplicate.similarity,
        duplicate_of=duplicate.other,
        exact_duplicate=duplicate.exact,
        edit_log_error=edit_log_error(
            draft if isinstance(draft, str) else None,
            revised if isinstance(revised, str) else None,
            revision.get("edits_json") if revision_row is not None else None,  # type: ignore[arg-type]
        ),
        n_edits=_count_edits(revision.get("edits_json")),
        deleted_fraction=deleted_fraction(draft if isinstance(draft, str) else None, revised_text),
    )


def unsupported_claims(caption: str, description: str, *, lexicon: Lexicon | None = None) -> list[str]:
    """Returns the caption's claims its description does not support, as ``"text [reason]"``.

    Two readers, one verdict:

    * findings, through the lexicon (synonyms, implications, negation:
      :meth:`Lexicon.unsupported_claims`): reasons ``unsupported`` and
      ``negation_flipped``;
    * morphology band claims (cellularity, nuclear size, pleomorphism, stroma, clear
      spaces, infiltrate), through ``verbalize.read_claims``, which reads wordings the
      lexicon does not ("the nuclei are predominantly large"). A band claim the
      description words with another label is ``band_contradicted`` ("small nuclei"
      against "large nuclei"); one about a band the description never mentions is
      ``unsupported`` (unless the lexicon read the same words as a supported finding);
      and a lexicon ``unsupported`` finding that is a band claim the
      description makes with a compatible label is supported after all ("an inflammatory
      infiltrate" supports "a possible lymphocytic infiltrate"). A flipped negation is
      never excused. Each stretch of the caption is reported once.
    """
    lexicon = lexicon or get_lexicon()
    described: dict[str, set[str]] = {}
    for claim in verbalize.read_claims(description):
        described.setdefault(claim.claim, set()).update(claim.labels)
    bands = [c for c in verbalize.read_claims(caption) if c.labels]
    mentions = lexicon.mentions(caption)
    lowered = caption.lower()
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for claim in lexicon.unsupported_claims(caption, description):
        surface = claim.text.removeprefix("no ")
        start = lowered.find(surface.lower())
        end = start + len(surface)
        excused = claim.reason == "unsupported" and any(
            start < b.start + len(b.phrase) and b.start < end and b.labels & described.get(b.claim, set())
            for b in bands
        )
        if not excused:
            found.append((start, f"{claim.text} [{claim.reason}]"))
            taken.append((start, end))
    for band in bands:
        start, end = band.start, band.start + len(band.phrase)
        if band.labels & described.get(band.claim, set()):
            continue
        if any(start < taken_end and taken_start < end for taken_start, taken_end in taken):
            continue
        if band.claim in described:
            reason = "band_contradicted"
        elif any(start < m.end and m.start < end for m in mentions):
            continue  # the lexicon read these words as a finding and found it supported
        else:
            reason = "unsupported"
        found.append((start, f"{band.phrase} [{reason}]"))
        taken.append((start, end))
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def _count_edits(edits_json: object) -> int:
    try:
        edits = json.loads(edits_json) if isinstance(edits_json, str) else []
    except json.JSONDecodeError:
        return 0
    return len(edits) if isinstance(edits, list) else 0


# ---------------------------------------------------------------------------------------
# Duplicates and alignment (need every caption of the slide at once)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuplicateMatch:
    """The caption most similar to one caption among those that precede it.

    Attributes:
        similarity: cosine of the MiniLM embeddings (1.0 for an exact duplicate).
        other: patch id of that caption, when it is a duplicate or near duplicate.
        exact: the two captions are equal once case, punctuation and spacing are folded.
    """

    similarity: float = 0.0
    other: str | None = None
    exact: bool = False


@dataclass(frozen=True)
class ReferenceCaptions:
    """Captions already kept in the dataset (other slides), to find duplicates against.

    ``signatures`` are their :func:`claim_signature` values, in the same order.
    """

    patch_ids: Sequence[str] = ()
    keys: Sequence[str] = ()
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    signatures: Sequence[frozenset] = ()


def claim_signature(text: str | None, lexicon: Lexicon | None = None) -> frozenset:
    """What a caption claims: its lexicon findings with negation, and the morphology bands
    its wording asserts (``verbalize.read_claims``).

    Sentence embeddings barely separate "scant stroma" from "abundant stroma" in otherwise
    equal templated captions (MiniLM cosine 0.98 on the sample slides), yet those captions
    teach CLIP different things; near duplicates must therefore also claim the same.
    """
    if not text:
        return frozenset()
    lexicon = lexicon or get_lexicon()
    findings = {(m.term, m.negated) for m in lexicon.mentions(text)}
    bands = {(c.claim, tuple(sorted(c.labels))) for c in verbalize.read_claims(text)}
    return frozenset(findings | bands)


def find_duplicates(
    patch_ids: Sequence[str],
    keys: Sequence[str],
    embeddings: np.ndarray,
    *,
    signatures: Sequence[frozenset] | None = None,
    reference: ReferenceCaptions | None = None,
    threshold: float = DEFAULT_CONFIG.near_duplicate_similarity,
    present: Sequence[bool] | None = None,
) -> list[DuplicateMatch]:
    """Returns each caption's best match among the captions that precede it.

    A caption is compared with the captions before it in the slide (in the order given,
    sorted by patch id by the asset, so the first copy is kept and later copies are
    flagged) and with every ``reference`` caption of other slides. Exact duplicates (same
    :func:`caption_key`) always match. Otherwise only captions with the same claim
    signature (when ``signatures`` are given) are candidates; the match reports the
    highest similarity among them, and ``other`` is set when it reaches ``threshold``.
    Empty captions (``present`` False) match nothing.
    """
    n = len(patch_ids)
    present = list(present) if present is not None else [True] * n
    reference = reference or ReferenceCaptions()
    # None = signature unknown: compared on similarity alone.
    own: list[frozenset | None] = list(signatures) if signatures is not None else [None] * n
    theirs: list[frozenset | None] = list(reference.signatures) or [None] * len(reference.patch_ids)
    matches: list[DuplicateMatch] = []
    first_with_key: dict[str, int] = {}
    reference_key = {key: pid for pid, key in zip(reference.patch_ids, reference.keys, strict=True)}
    within = embeddings @ embeddings.T if n else np.zeros((0, 0))
    has_reference = len(reference.patch_ids) > 0
    against = embeddings @ reference.embeddings.T if has_reference and n else None
    for i in range(n):
        if not present[i]:
            matches.append(DuplicateMatch())
            continue
        if keys[i] in reference_key:
            matches.append(DuplicateMatch(1.0, reference_key[keys[i]], True))
            continue
        if keys[i] in first_with_key:
            matches.append(DuplicateMatch(1.0, patch_ids[first_with_key[keys[i]]], True))
            continue
        first_with_key[keys[i]] = i
        best, other = 0.0, None
        for j in range(i):
            if present[j] and _same_claims(own[j], own[i]) and within[i, j] > best:
                best, other = float(within[i, j]), patch_ids[j]
        if against is not None:
            for j in np.argsort(-against[i]):
                if _same_claims(theirs[j], own[i]):
                    if against[i, j] > best:
                        best, other = float(against[i, j]), reference.patch_ids[j]
                    break
        best = min(best, 1.0)
        matches.append(DuplicateMatch(best, other if best >= threshold else None, False))
    return matches


def _same_claims(a: frozenset | None, b: frozenset | None) -> bool:
    return a is None or b is None or a == b


def alignment_scores(
    caption_embeddings: np.ndarray,
    facts_sentences: Sequence[str | None],
    encode: TextEncoder,
    *,
    present: Sequence[bool] | None = None,
) -> list[float | None]:
    """Cosine of MiniLM(caption) and MiniLM(verbalised measured morphology), per caption.

    The weight-free stand-in for a CLIP score: it rewards a caption that talks about what
    was measured on its patch. None where the caption (``present`` False) or the facts
    sentence is missing.

    Args:
        caption_embeddings: (n, d) unit-length caption embeddings.
        facts_sentences: ``verbalize.facts_sentence`` of each caption's patch, or None.
        encode: the encoder that made ``caption_embeddings``.
        present: which captions have text (all by default).
    """
    present = list(present) if present is not None else [True] * len(facts_sentences)
    pairs = [i for i, f in enumerate(facts_sentences) if f and present[i]]
    scores: list[float | None] = [None] * len(facts_sentences)
    if not pairs:
        return scores
    facts_emb = encode_unique([facts_sentences[i] for i in pairs], encode)  # type: ignore[misc]
    values = np.sum(caption_embeddings[pairs] * facts_emb, axis=1)
    for i, value in zip(pairs, values, strict=True):
        scores[i] = float(value)
    return scores


@dataclass(frozen=True)
class SlideInputs:
    """One slide's captions with what they are checked against, keyed by patch id."""

    captions: Sequence[Mapping[str, object]]
    revisions: Mapping[str, Mapping[str, object]]
    facts: Mapping[str, MorphologyFacts]
    tissue_sites: Mapping[str, str | None] = field(default_factory=dict)
    evidence: Mapping[str, Evidence] = field(default_factory=dict)


@dataclass(frozen=True)
class SlideMeasures:
    """Measures of every caption of a slide, and the caption embeddings they used."""

    measures: list[CaptionMeasures]
    embeddings: np.ndarray


def measure_slide(
    inputs: SlideInputs,
    *,
    encode: TextEncoder,
    reference: ReferenceCaptions | None = None,
    image_text_scores: Sequence[float | None] | None = None,
    config: FidelityConfig = DEFAULT_CONFIG,
) -> SlideMeasures:
    """Returns the measures of every caption of a slide, in patch-id order.

    Args:
        inputs: the slide's captions, revisions and facts.
        encode: sentence encoder for duplicates and the default alignment score.
        reference: kept captions of other slides, for dataset-wide duplicates.
        image_text_scores: CLIP scores in ``inputs.captions`` order when a CLIP encoder
            is configured; otherwise alignment is measured against the verbalised facts.
        config: thresholds (only ``near_duplicate_similarity`` is used while measuring).
    """
    order = sorted(range(len(inputs.captions)), key=lambda i: str(inputs.captions[i]["patch_id"]))
    rows = [inputs.captions[i] for i in order]
    patch_ids = [str(row["patch_id"]) for row in rows]
    texts = [row.get("caption") if isinstance(row.get("caption"), str) else None for row in rows]
    present = [bool(t and t.strip()) for t in texts]
    embedded = encode_unique([t for t, p in zip(texts, present, strict=True) if p], encode)
    dim = embedded.shape[1] if embedded.ndim == 2 and embedded.shape[0] else 384
    embeddings = np.zeros((len(rows), dim), dtype=np.float32)
    if embedded.shape[0]:
        embeddings[np.array(present)] = embedded
    keys = [caption_key(t) for t in texts]
    lexicon = get_lexicon()
    duplicates = find_duplicates(
        patch_ids,
        keys,
        embeddings,
        signatures=[claim_signature(t, lexicon) for t in texts],
        reference=reference,
        threshold=config.near_duplicate_similarity,
        present=present,
    )
    mode: AlignmentMode
    if image_text_scores is not None:
        mode = "clip"
        scores = [image_text_scores[i] for i in order]
    else:
        mode = "minilm_facts"
        sentences = [
            verbalize.facts_sentence(inputs.facts[pid], inputs.tissue_sites.get(pid))
            if pid in inputs.facts
            else None
            for pid in patch_ids
        ]
        scores = alignment_scores(embeddings, sentences, encode, present=present)
    tokenizer = get_tokenizer()
    measures = [
        measure(
            row,
            inputs.revisions.get(pid),
            inputs.facts.get(pid),
            alignment_score=score,
            alignment_mode=mode,
            duplicate=duplicate,
            evidence=inputs.evidence.get(pid),
            lexicon=lexicon,
            tokenizer=tokenizer,
        )
        for row, pid, score, duplicate in zip(rows, patch_ids, scores, duplicates, strict=True)
    ]
    return SlideMeasures(measures, embeddings)


# ---------------------------------------------------------------------------------------
# Rules and judging
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One pass/fail rule over :class:`CaptionMeasures`.

    Attributes:
        name: stable id, a key of ``rule_results_json``.
        severity: ``severe`` failures count towards the slide's blocking gate; ``warn``
            failures do not. Either kind quarantines the caption.
        version: bumped when the rule's logic changes.
        group: structure, length, faithfulness, grounding, evidence, alignment, duplicates,
            revision.
        measures: what the rule reads, in words.
        threshold: its threshold, in words (names the :class:`FidelityConfig` field).
        failure: returns why the caption fails, or None when it passes.
    """

    name: str
    severity: Severity
    version: int
    group: str
    measures: str
    threshold: str
    failure: Callable[[CaptionMeasures, FidelityConfig], str | None]


def _non_empty(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.caption is None or not m.caption.strip():
        return "caption is missing or blank"
    if m.caption_words < c.min_caption_words:
        return f"{m.caption_words} words, fewer than {c.min_caption_words}"
    return None


def _english_prose(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.non_english


def _plain_paragraph(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.paragraphs > 1:
        return f"{m.paragraphs} paragraphs or lines"
    return m.formatting


def _sentence_end(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if not m.caption or m.ends_with_sentence_end:
        return None
    return f"ends with {m.caption.strip()[-12:]!r}, not a full stop"


def _no_meta(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.meta_language


def _no_question(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.question


def _no_repetition(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.repetition


def _on_topic(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.off_topic


def _clip_length(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.clip_tokens <= c.max_clip_tokens:
        return None
    return f"{m.clip_tokens} CLIP tokens, over the {c.max_clip_tokens}-token window"


def _description_length(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if c.min_description_words <= m.description_words <= c.max_description_words:
        return None
    return (
        f"revised description has {m.description_words} words, outside "
        f"[{c.min_description_words}, {c.max_description_words}]"
    )


def _faithful(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if not m.unsupported_claims:
        return None
    return "claims the description does not support: " + "; ".join(m.unsupported_claims)


def _caption_grounded(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if not m.contradictions:
        return None
    return "contradicts the measured morphology: " + "; ".join(m.contradictions)


def _description_grounded(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if not m.description_contradictions:
        return None
    return "revised description contradicts the measurements: " + "; ".join(m.description_contradictions)


def _confirmed(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if not m.evidence_disagreements:
        return None
    return "not confirmed by the second nucleus detector: " + "; ".join(m.evidence_disagreements)


def _aligned(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.alignment_score is None:
        return None if not m.caption else "no alignment score (facts or encoder missing)"
    minimum = c.min_clip_score if m.alignment_mode == "clip" else c.min_alignment
    if m.alignment_score >= minimum:
        return None
    return f"{m.alignment_mode} alignment {m.alignment_score:.3f} below {minimum}"


def _unique(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return f"exact duplicate of the caption of {m.duplicate_of}" if m.exact_duplicate else None


def _not_near_duplicate(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.exact_duplicate or m.max_duplicate_similarity < c.near_duplicate_similarity:
        return None
    return f"near duplicate (cosine {m.max_duplicate_similarity:.3f}) of the caption of {m.duplicate_of}"


def _edit_log(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    return m.edit_log_error


def _revision_keeps_draft(m: CaptionMeasures, c: FidelityConfig) -> str | None:
    if m.deleted_fraction <= c.max_deleted_fraction:
        return None
    return f"revision deleted {m.deleted_fraction:.0%} of the draft's words"


RULES: tuple[Rule, ...] = (
    Rule("non_empty", "severe", 1, "structure", "caption text and its word count",
         "present and >= min_caption_words words", _non_empty),
    Rule("english_prose", "severe", 1, "structure",
         "non-ASCII letter share; English function words",
         "<= 5 % foreign letters; a function word in any caption of 6+ words",
         _english_prose),
    Rule("plain_paragraph", "warn", 1, "structure",
         "line/paragraph count; markdown, list, heading or table markers",
         "one paragraph, no markup", _plain_paragraph),
    Rule("sentence_end", "warn", 1, "structure", "last character",
         "ends with '.' or '!' (a cut caption does not)", _sentence_end),
    Rule("no_meta_language", "severe", 1, "structure",
         "refusal, prompt-talk and preamble phrases; copied <placeholders>; 5-word runs "
         "copied from the agent prompts",
         "none (screening.META_PHRASES + EXTRA_META_PHRASES + prompt echo)", _no_meta),
    Rule("no_questions", "severe", 1, "structure", "sentences ending with '?'", "none",
         _no_question),
    Rule("no_repetition", "warn", 1, "structure", "most frequent word 3-gram",
         "seen fewer than 4 times", _no_repetition),
    Rule("on_topic", "warn", 1, "structure", "histology word stems", "at least one",
         _on_topic),
    Rule("clip_length", "severe", 1, "length", "CLIP BPE tokens incl. start/end (real tokenizer)",
         "<= max_clip_tokens (77)", _clip_length),
    Rule("description_length", "warn", 1, "length", "words of the revised description",
         "within [min_description_words, max_description_words]", _description_length),
    Rule("faithful_to_description", "severe", 1, "faithfulness",
         "caption findings and band claims vs revised description (lexicon, synonyms, "
         "negation; verbalize band reader)",
         "no unsupported or negation-flipped claim", _faithful),
    Rule("caption_grounded", "severe", 1, "grounding",
         "caption claims vs measured morphology (verbalize + GROUNDING_RULES)",
         "no contradiction", _caption_grounded),
    Rule("description_grounded", "warn", 1, "grounding",
         "revised-description claims vs measured morphology", "no contradiction",
         _description_grounded),
    Rule("confirmed_by_second_detector", "warn", 1, "evidence",
         "caption band claims vs an independent re-measurement (distance-transform "
         "watershed nuclei, lib/quality/evidence.py)",
         "no claim about a band the two detectors measure differently", _confirmed),
    Rule("image_text_alignment", "warn", 1, "alignment",
         "cosine MiniLM(caption) vs MiniLM(facts sentence), or CLIP score",
         ">= min_alignment (0.30) / min_clip_score (20)", _aligned),
    Rule("unique_caption", "warn", 1, "duplicates",
         "folded caption text vs earlier captions of the slide and kept captions of "
         "other slides", "no exact duplicate", _unique),
    Rule("not_near_duplicate", "warn", 1, "duplicates",
         "max MiniLM cosine to earlier / other-slide captions that make the same claims",
         "< near_duplicate_similarity (0.95)", _not_near_duplicate),
    Rule("edit_log_valid", "warn", 1, "revision",
         "edit log JSON: ops, spans in the draft, reasons (edit_log.parse_revision)",
         "present and well formed", _edit_log),
    Rule("revision_keeps_draft", "warn", 1, "revision",
         "share of draft words the revision removed", "<= max_deleted_fraction (0.6)",
         _revision_keeps_draft),
)  # fmt: skip
"""Every rule, in the order they are reported."""

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)
SEVERE_RULES: tuple[str, ...] = tuple(r.name for r in RULES if r.severity == "severe")


def ruleset_version(lexicon: Lexicon | None = None) -> str:
    """The rule set's id recorded on every row: version, rules digest and lexicon version.

    The digest covers every rule's name, severity and version, so changing one without
    bumping :data:`RULESET_VERSION` still changes the id.
    """
    lexicon = lexicon or get_lexicon()
    spec = ";".join(f"{r.name}:{r.severity}:{r.version}" for r in RULES)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:8]
    return f"{RULESET_VERSION}+{digest}+lexicon.{lexicon.version}"


@dataclass(frozen=True)
class Judgement:
    """The verdict on one caption.

    Attributes:
        results: rule name -> passed, for every rule.
        reasons: rule name -> why it failed, for failed rules only.
        failed: failed rule names, in rule order.
        severe_failure: a severe rule failed (counted by the slide's blocking gate).
        passed: every rule passed; otherwise the caption is quarantined.
        score: share of rules passed.
    """

    results: dict[str, bool]
    reasons: dict[str, str]
    failed: tuple[str, ...]
    severe_failure: bool
    passed: bool
    score: float


def judge(
    measures: CaptionMeasures,
    config: FidelityConfig = DEFAULT_CONFIG,
    *,
    rules: Sequence[Rule] = RULES,
) -> Judgement:
    """Returns every rule's verdict on ``measures`` and the caption's overall verdict."""
    reasons: dict[str, str] = {}
    for rule in rules:
        why = rule.failure(measures, config)
        if why is not None:
            reasons[rule.name] = why
    results = {rule.name: rule.name not in reasons for rule in rules}
    severe = any(r.severity == "severe" and r.name in reasons for r in rules)
    return Judgement(
        results=results,
        reasons=reasons,
        failed=tuple(r.name for r in rules if r.name in reasons),
        severe_failure=severe,
        passed=not reasons,
        score=sum(results.values()) / len(results) if results else 1.0,
    )


def rules_table() -> list[dict[str, object]]:
    """Every rule as a plain dict (name, severity, version, group, measures, threshold)."""
    return [
        {
            "name": rule.name,
            "severity": rule.severity,
            "version": rule.version,
            "group": rule.group,
            "measures": rule.measures,
            "threshold": rule.threshold,
        }
        for rule in RULES
    ]


# ---------------------------------------------------------------------------------------
# Slide level: pass rates and the blocking gate
# ---------------------------------------------------------------------------------------


def pass_rates(rule_results: Sequence[Mapping[str, bool]]) -> dict[str, float]:
    """Share of captions that passed each rule, every rule present (1.0 when none)."""
    if not rule_results:
        return dict.fromkeys(RULE_NAMES, 1.0)
    return {
        name: sum(bool(r.get(name, False)) for r in rule_results) / len(rule_results) for name in RULE_NAMES
    }


@dataclass(frozen=True)
class SlideGate:
    """Whether a slide's captions may feed the training set, and why not.

    Attributes:
        slide_id: the slide.
        captions: captions checked.
        severe_failures: captions that failed at least one severe rule.
        severe_failure_rate: ``severe_failures / captions`` (0 for no captions).
        max_rate: the limit it was held to.
        failing_rules: severe rule -> captions that failed it, most frequent first.
        passed: the rate is within the limit.
    """

    slide_id: str
    captions: int
    severe_failures: int
    severe_failure_rate: float
    max_rate: float
    failing_rules: dict[str, int]
    passed: bool

    @property
    def message(self) -> str:
        """One line for the UI: the slide, what failed and the fix."""
        if not self.captions:
            return f"slide {self.slide_id!r}: no captions to check (nothing to train on)"
        summary = (
            f"slide {self.slide_id!r}: {self.severe_failures} of {self.captions} captions "
            f"({self.severe_failure_rate:.0%}) failed severe rules, limit "
            f"{self.max_rate:.0%}"
        )
        if self.passed:
            return summary + "; the slide's passing captions may enter training_pairs."
        rules = ", ".join(f"{name} ({count})" for name, count in self.failing_rules.items())
        return (
            f"{summary}. Failing rules: {rules}. Training pairs of this slide are blocked. "
            f"Quarantined rows: SELECT patch_id, failure_reasons FROM caption_quality WHERE "
            f"slide_id = '{self.slide_id}' AND NOT passed. Fix: re-run the caption agents "
            f"for this slide (another backend or model), or raise max_severe_failure_rate."
        )


def gate_slide(
    slide_id: str,
    rule_results: Sequence[Mapping[str, bool]],
    *,
    max_rate: float = DEFAULT_CONFIG.max_severe_failure_rate,
) -> SlideGate:
    """Returns the slide's gate verdict from its captions' ``{rule: passed}`` results."""
    severe_failed = [
        [name for name in SEVERE_RULES if not result.get(name, False)] for result in rule_results
    ]
    failures = sum(bool(names) for names in severe_failed)
    counts: dict[str, int] = {}
    for names in severe_failed:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    rate = failures / len(rule_results) if rule_results else 0.0
    return SlideGate(
        slide_id=slide_id,
        captions=len(rule_results),
        severe_failures=failures,
        severe_failure_rate=rate,
        max_rate=max_rate,
        failing_rules=dict(sorted(counts.items(), key=lambda item: -item[1])),
        passed=rate <= max_rate,
    )
