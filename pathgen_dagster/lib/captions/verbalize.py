"""Grounded captions: text written from measured morphology, faithful by construction.

The "grounded" backend of the three PathGen agents. Every sentence is worded from a band of
:class:`~pathgen_dagster.lib.selection.facts.MorphologyFacts` (the band table
:data:`~pathgen_dagster.lib.selection.facts.BANDS`), so it says only what was measured:

* :func:`describe` writes a PathGen-style description (cells and tissue first);
* :func:`revise` checks a draft sentence by sentence against the facts and returns the
  corrected text with an edit log of modify / delete / add edits;
* :func:`summarize` condenses a description into a CLIP caption that fits 77 tokens and
  asserts nothing the description does not;
* :func:`facts_sentence` states the measured morphology in one plain sentence, for text
  retrieval and image-text alignment in the weight-free default mode.

Phrasing varies with a ``seed`` string (the patch id): each sentence slot picks one of
several wordings with a hash of (seed, slot), so re-runs are identical and neighbouring
patches do not read alike.

The sentence-vs-facts rules live in ONE table, :data:`CLAIM_RULES` (what a wording
asserts about a band) plus :data:`UNMEASURED_FINDINGS` (findings no measurement here can
support, such as necrosis). :func:`contradictions` applies them for the quality stage and
for the agents; :func:`revise` and :func:`summarize` read claims with the same table, and
the tests check that every sentence the backend writes reads back as what it measured.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pathgen_dagster.lib.captions.tokenizer import get_tokenizer
from pathgen_dagster.lib.quality.lexicon import get_lexicon
from pathgen_dagster.lib.selection import findings
from pathgen_dagster.lib.selection.facts import TISSUE_MIN_FRACTION, MorphologyFacts

EditOp = Literal["modify", "delete", "add"]

# Up to three words (commas and hyphens allowed) between a qualifier and its noun:
# "abundant pink, eosinophilic stroma", "moderate amount of eosinophilic stroma". A
# conjunction or preposition ends the phrase: in "prominent nucleoli and eosinophilic
# cytoplasm", "prominent" does not qualify the cytoplasm.
_GAP_WORD = r"(?!(?:and|or|nor|but|with|without|between|within|in|into|from|to|by)\b)[\w-]+"
_GAP = rf"(?:[\s,]+{_GAP_WORD}){{0,3}}?[\s,]+"
_NEGATION = r"no|not|without|absence\s+of|lack\s+of|lacks|lacking|free\s+of|devoid\s+of|nor"
_COPULA = r"(?:is|are|appears?|seems?|remains?)"


def _qualified(qualifiers: str, nouns: str) -> str:
    """Regex: a qualifier before a noun ("scant stroma"), or noun, copula, qualifier.

    The qualifier is captured (groups q1, q2) so that only it is used up when the phrase
    matches: in "large, markedly pleomorphic nuclei" the size claim must leave
    "markedly pleomorphic" to the pleomorphism rule.
    """
    return (
        rf"\b(?P<q1>{qualifiers})\b{_GAP}(?:{nouns})\b"
        rf"|\b(?:{nouns})\s+{_COPULA}\s+(?:[\w-]+\s+)?(?P<q2>{qualifiers})\b"
    )


def _negated_list(nouns: str) -> str:
    """Regex: a negation, up to three words, then one noun or a list of them."""
    glue = r"(?:,\s*|\s+or\s+|\s+and\s+|\s+nor\s+)"
    item = rf"(?:[\w-]+\s+){{0,2}}?(?:{nouns})"
    return rf"\b(?:{_NEGATION})\b{_GAP}(?:{nouns})\b(?:{glue}{item}\b)*"


_NUCLEI = r"nuclei|nucleus"
_STROMA = r"stroma|stromal|collagen\w*|connective\s+tissue|eosinophilic|fibrous|desmoplas\w*"
_SPACES = (
    r"(?:clear|white|empty|open|optically\s+clear)\s+(?:spaces?|areas?)|spaces|lumina|lumens?"
    r"|luminal\s+spaces|fat|adipocytes?|adipose(?:\s+tissue)?|vacuoles?"
)
_INFILTRATE = (
    r"(?:lymphocytic|lymphoid|inflammatory|lymphoplasmacytic|immune)\s+(?:cell\s+)?"
    r"(?:infiltrat\w*|aggregat\w*|cells|infiltration)"
)


class Wording(NamedTuple):
    """A way of asserting a band: its regex and the band labels it is compatible with."""

    pattern: re.Pattern[str]
    labels: frozenset[str]


def _wording(pattern: str, *labels: str) -> Wording:
    return Wording(re.compile(pattern, re.IGNORECASE), frozenset(labels))


@dataclass(frozen=True)
class ClaimRule:
    """What text can assert about one band of the facts, and when that is supportable.

    Attributes:
        claim: the band (a field of MorphologyFacts and a key of BANDS).
        wordings: tried in order on each sentence, rules in table order; a matched span
            is used up, so a specific wording ("no marked pleomorphism") wins over a
            general one and one claim's words never count for the next rule.
        salient: labels worth saying: a description that omits them gets one added.
        assessable: whether the facts can support any claim about the band at all.
        evidence: the measurement behind the band, worded for reasons.
    """

    claim: str
    wordings: tuple[Wording, ...]
    salient: frozenset[str]
    assessable: Callable[[MorphologyFacts], bool]
    evidence: Callable[[MorphologyFacts], str]


def _has_tissue(facts: MorphologyFacts) -> bool:
    return facts.tissue_fraction >= TISSUE_MIN_FRACTION


def _has_nuclei(facts: MorphologyFacts) -> bool:
    return facts.nuclear_detail_supported


def _has_scaled_tissue(facts: MorphologyFacts) -> bool:
    """Tissue measured at a known scale: the nucleus detector's micron sizes meant microns."""
    return _has_tissue(facts) and facts.scale_known


# THE sentence-vs-facts table. A wording that names a band label the facts do not have is
# a contradiction; a wording about a band the facts cannot assess (too little tissue, too
# few nuclei) is unsupported. Mentions without a degree ("lymphocytes", "stroma") claim
# nothing: scattered lymphocytes are compatible with any measurement. Words about fibre
# texture ("thin", "dense" collagen) are not amounts and are not read as stroma claims.
CLAIM_RULES: tuple[ClaimRule, ...] = (
    ClaimRule(
        "cellularity",
        (
            _wording(
                r"\bmoderate(?:ly)?\s+cellular(?:ity)?\b|\bintermediate\s+cellularity\b"
                r"|\bcellularity\s+is\s+moderate\b",
                "moderate",
            ),
            _wording(
                r"\b(?:low|sparse(?:ly)?|poor(?:ly)?|scant(?:ily)?)\s+cellular(?:ity)?\b"
                r"|\bhypocellular\w*|\bpaucicellular\w*|\bcellularity\s+is\s+low\b"
                r"|\b(?:few|sparse)\s+(?:cells|nuclei)\b",
                "low",
            ),
            _wording(
                r"\b(?:dense(?:ly)?|high(?:ly)?|marked(?:ly)?)\s+cellular(?:ity)?\b"
                r"|\bhypercellular\w*|\bcellularity\s+is\s+high\b"
                r"|\b(?:densely|closely|tightly)\s+packed\s+(?:[\w-]+\s+){0,2}?(?:cells|nuclei)\b"
                r"|\b(?:cells|nuclei)\s+(?:are\s+)?(?:densely|closely|tightly)\s+packed\b"
                r"|\bcrowded\s+(?:cells|nuclei)\b",
                "high",
            ),
        ),
        salient=frozenset({"low", "moderate", "high"}),
        assessable=_has_scaled_tissue,
        evidence=lambda f: f"nuclei cover {f.nuclear_fraction:.0%} of the tissue",
    ),
    ClaimRule(
        "nuclear_size",
        (
            _wording(
                r"\b(?:medium|intermediate|moderate(?:ly)?)(?:-|\s+)sized\s+nuclei\b"
                rf"|\b(?:{_NUCLEI})\s+{_COPULA}\s+(?:[\w-]+\s+)?(?:(?:medium|intermediate)"
                r"(?:-sized|\s+in\s+size)?|moderately\s+sized)\b",
                "medium",
            ),
            _wording(
                _qualified(r"large|enlarged|big|giant", _NUCLEI)
                + r"|\bnuclear\s+enlargement\b|\bnucleomegaly\b",
                "large",
            ),
            _wording(_qualified(r"small-sized|small|tiny", _NUCLEI), "small"),
        ),
        salient=frozenset({"small", "large"}),
        assessable=_has_nuclei,
        evidence=lambda f: f"mean nuclear area {f.nuclear_area_mean_um2:.0f} um2",
    ),
    ClaimRule(
        "pleomorphism",
        (
            _wording(
                rf"\b(?:{_NEGATION})\s+(?:[\w-]+\s+){{0,2}}?(?:pleomorph\w*|atypia)"
                r"|\b(?:mild(?:ly)?|slight(?:ly)?|minimal(?:ly)?|little|minor)\s+"
                r"(?:[\w-]+\s+)?(?:pleomorph\w*|variation|variability|anisonucleosis)"
                rf"|\bmonomorph\w*|\buniform\s+(?:[\w-]+\s+)?(?:{_NUCLEI})\b"
                rf"|\b(?:{_NUCLEI})\s+{_COPULA}\s+(?:[\w-]+\s+){{0,3}}?uniform\b",
                "mild",
            ),
            _wording(
                r"\bmoderate(?:ly)?\s+(?:[\w-]+\s+)?(?:pleomorph\w*|variation|variability|anisonucleosis)"
                r"|\bsome\s+variation\s+in\s+nuclear\s+size\b",
                "moderate",
            ),
            _wording(
                r"\b(?:marked(?:ly)?|severe(?:ly)?|striking(?:ly)?|considerabl[ey]|high(?:ly)?"
                r"|prominent|pronounced|extreme(?:ly)?)\s+(?:[\w-]+\s+)?(?:pleomorph\w*|variation|variability|anisonucleosis)",
                "marked",
            ),
            _wording(r"\bpleomorph\w*|\banisonucleosis\b", "moderate", "marked"),
        ),
        salient=frozenset({"marked"}),
        assessable=_has_nuclei,
        evidence=lambda f: f"nuclear area SD {f.nuclear_area_std_um2:.0f} um2",
    ),
    ClaimRule(
        "stroma",
        (
            _wording(
                _qualified(r"moderate|moderate\s+amounts?\s+of|intermediate", _STROMA),
                "moderate",
            ),
            _wording(
                _qualified(r"scant|scanty|little|minimal|sparse|scarce|only\s+a\s+little", _STROMA),
                "scant",
            ),
            _wording(
                _qualified(
                    r"abundant|extensive|plentiful|prominent|copious|rich|much"
                    r"|large\s+amounts?\s+of",
                    _STROMA,
                )
                + r"|\bstroma-rich\b",
                "abundant",
            ),
        ),
        salient=frozenset({"abundant"}),
        assessable=_has_tissue,
        evidence=lambda f: f"eosin dominates {f.eosin_fraction:.0%} of the tissue",
    ),
    ClaimRule(
        "lumen_or_fat",
        (
            _wording(_negated_list(_SPACES), "absent"),
            _wording(
                _qualified(
                    r"prominent|large|numerous|many|extensive|abundant|wide|conspicuous", _SPACES
                ),
                "prominent",
            ),
            _wording(
                _qualified(r"focal|few|occasional|small|scattered|some|rare|isolated", _SPACES),
                "focal",
            ),
            _wording(rf"\b(?:{_SPACES})\b", "focal", "prominent"),
        ),
        salient=frozenset({"prominent"}),
        assessable=lambda f: True,
        evidence=lambda f: f"white space covers {f.white_fraction:.0%} of the field",
    ),
    ClaimRule(
        "inflammation_hint",
        (
            _wording(
                rf"\b(?:{_NEGATION})\b{_GAP}(?:inflamm\w*|infiltrat\w*|lymphocyt\w*|lymphoid"
                r"|immune\s+cells)\b",
                "none",
            ),
            _wording(
                r"\b(?:(?:dense|heavy|numerous|many|abundant|prominent|brisk|marked|possible)\s+)?"
                + _INFILTRATE
                + r"\b|\binflammation\b|\binflamed\b|\blymphocyte-rich\b"
                r"|\b(?:numerous|many|dense|abundant|clusters?\s+of|sheets?\s+of|aggregates?\s+of)"
                r"\s+(?:[\w-]+\s+){0,2}?lymphocytes\b",
                "possible",
            ),
        ),
        salient=frozenset({"possible"}),
        assessable=_has_scaled_tissue,
        evidence=lambda f: (
            f"{f.lymphoid_density_per_mm2:.0f} lymphocyte-like nuclei per mm2 of tissue"
        ),
    ),
)


def _finding_measured(name: str) -> Callable[[MorphologyFacts], bool]:
    detector = findings.DETECTORS_BY_NAME[name]
    return lambda f: _label(f, name) != findings.UNKNOWN and (
        name == "ink" or _has_tissue(f)  # ink lies on glass too
    ) and detector.measure is not None


# Findings: "present" or "absent" by the detectors of lib/selection/findings.py. Only
# validated findings have a rule: they are the only ones the backend writes, and the only
# ones whose detector is trusted to judge another backend's text.
_FINDING_WORDS = {
    "keratin": r"keratin(?:ous)?|cornified\s+(?:layer|material|lamellae)",
    "collagen": r"collagen(?:ous)?(?:\s+(?:fibres?|fibers?|bundles?))?",
    "ink": r"(?:tissue-?\s*)?marking\s+ink|surgical\s+ink|\bink(?:ed)?",
}
_FINDING_RULES = tuple(
    ClaimRule(
        name,
        (
            _wording(_negated_list(_FINDING_WORDS[name]), findings.ABSENT),
            _wording(rf"\b(?:{_FINDING_WORDS[name]})\b", findings.PRESENT),
        ),
        salient=frozenset({findings.PRESENT}),
        assessable=_finding_measured(name),
        evidence=lambda f, d=findings.DETECTORS_BY_NAME[name]: (
            f"{d.measure} {getattr(f, d.measure):.3g}, present from {d.threshold:.3g}"
        ),
    )
    for name in sorted(findings.VALIDATED)
)
CLAIM_RULES = CLAIM_RULES + _FINDING_RULES
RULES_BY_CLAIM = {rule.claim: rule for rule in CLAIM_RULES}


def _worded(claim: str) -> bool:
    """Whether the backend may write the band or finding (not a band that failed the labels)."""
    return claim not in findings.UNVALIDATED_BANDS


def _label(facts: MorphologyFacts, claim: str) -> str:
    """The facts' label for a band or a finding ('present' / 'absent' / 'unknown')."""
    detector = findings.DETECTORS_BY_NAME.get(claim)
    if detector is not None:
        if detector.measure is None:
            return findings.UNKNOWN
        return findings.label(detector, getattr(facts, detector.measure))
    return getattr(facts, claim)

# Findings that no measurement of the morphology encoder can see: asserting one is never
# supported (denying one, "no necrosis", asserts nothing and passes).
UNMEASURED_FINDINGS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "necrosis": r"\bnecro(?:sis|tic|ses)\b",
        "mitoses": r"\bmitotic\s+(?:figures?|activity|count)\b|\bmitos[ie]s\b|\bmitotic\b",
        "haemorrhage": r"\bha?emorrhag\w*",
        "calcification": r"\bcalcifi\w*",
        "mucin": r"\bmucin\w*|\bmucoid\b",
        "keratinisation": r"\bkeratini[sz]\w*|\bkeratin\s+pearls?\b",
        "granuloma": r"\bgranulom\w*",
    }.items()
}
_DENIED_BEFORE = re.compile(
    rf"\b(?:{_NEGATION}|negative\s+for|no\s+evidence\s+of)\b(?:[\s,]+[\w-]+){{0,3}}?[\s,]*$",
    re.IGNORECASE,
)
_DENIED_AFTER = re.compile(
    r"^\s*(?:is|are|was|were)?\s*(?:not\s+(?:seen|identified|present|evident|observed)|absent)\b",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(r"[;:()]|\bbut\b|\bhowever\b|\bwhereas\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class Claim(NamedTuple):
    """One claim found in text.

    Attributes:
        claim: a band of :data:`CLAIM_RULES` or a finding of :data:`UNMEASURED_FINDINGS`.
        phrase: the words that make it, exactly as in the text.
        labels: band labels the wording is compatible with; empty for unmeasured findings.
        start: offset of ``phrase`` in the text.
    """

    claim: str
    phrase: str
    labels: frozenset[str]
    start: int


def read_claims(text: str) -> list[Claim]:
    """The claims in ``text`` about bands and unmeasured findings, in text order."""
    found = []
    offset = 0
    for sentence in split_sentences(text):
        offset = text.index(sentence, offset)
        found += [c._replace(start=c.start + offset) for c in _sentence_claims(sentence)]
        offset += len(sentence)
    return found


# Captions, revisions, quality rules and instruction options re-read the same sentences
# (the benchmark slide: 38k calls); the claims depend on the sentence alone.
@functools.lru_cache(maxsize=8192)
def _sentence_claims(sentence: str) -> tuple[Claim, ...]:
    found = []
    # Matched words are blanked for every later wording, of this rule and of later rules:
    # "moderate pleomorphism, scant stroma" must not also read as "moderate ... stroma".
    remaining = sentence
    for rule in CLAIM_RULES:
        for wording in rule.wordings:
            for match in wording.pattern.finditer(remaining):
                phrase = sentence[match.start() : match.end()]
                found.append(Claim(rule.claim, phrase, wording.labels, match.start()))
                groups = [g for g in ("q1", "q2") if match.re.groupindex.get(g) and match[g]]
                start, end = match.span(groups[0]) if groups else match.span()
                remaining = remaining[:start] + " " * (end - start) + remaining[end:]
    for finding, pattern in UNMEASURED_FINDINGS.items():
        for match in pattern.finditer(sentence):
            if not _denied(sentence, match.start(), match.end()):
                found.append(Claim(finding, match.group(), frozenset(), match.start()))
    return tuple(sorted(found, key=lambda c: c.start))


def _denied(sentence: str, start: int, end: int) -> bool:
    """Whether a negation governs the words at [start, end) (same clause, close by)."""
    before = sentence[:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end() :]
    return bool(_DENIED_BEFORE.search(before) or _DENIED_AFTER.search(sentence[end:]))


def _verdict(claim: Claim, facts: MorphologyFacts) -> str | None:
    """Why the facts do not support ``claim``, or None when they do."""
    if claim.claim in UNMEASURED_FINDINGS:
        return f"no measurement here can see {claim.claim} [{claim.claim}_unmeasured]"
    if claim.claim in findings.DETECTORS_BY_NAME and _label(facts, claim.claim) == findings.UNKNOWN:
        return None  # measured before the finding detectors existed: nothing to judge with
    rule = RULES_BY_CLAIM[claim.claim]
    subject = claim.claim.replace("_", " ")
    if claim.claim in findings.UNVALIDATED_BANDS:  # its band failed the labelled set
        if findings.BAND_FINDINGS[claim.claim][0] not in claim.labels:
            return None  # a denial ("no inflammatory infiltrate") asserts nothing
        return (
            f"no validated measurement here can see {subject} (its band failed the labelled "
            f"set) [{claim.claim}_unvalidated]"
        )
    if not rule.assessable(facts):
        if not facts.scale_known and rule.assessable in (_has_nuclei, _has_scaled_tissue):
            why = "the slide's microns per pixel are unknown"
        elif rule.assessable is _has_nuclei:
            why = f"only {facts.nuclei_count} nuclei were found"
        else:
            why = f"tissue covers only {facts.tissue_fraction:.0%} of the field"
        return f"{why}, too little to judge {subject} [{claim.claim}_unassessable]"
    measured = _label(facts, claim.claim)
    if measured in claim.labels:
        return None
    said = " or ".join(sorted(claim.labels))
    return (
        f"says {subject} {said}, measured {measured} ({rule.evidence(facts)}) "
        f"[{claim.claim}_contradicted]"
    )


def contradictions(text: str, facts: MorphologyFacts) -> list[tuple[str, str]]:
    """(phrase, reason) for every claim in ``text`` that ``facts`` contradict or cannot support.

    A phrase is quoted exactly as it stands in ``text``; a reason ends with the rule's
    name in brackets (``[cellularity_contradicted]``, ``[necrosis_unmeasured]``).
    """
    return [
        (claim.phrase, reason)
        for claim in read_claims(text)
        if (reason := _verdict(claim, facts)) is not None
    ]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, split after . ! ? before a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


# ---------------------------------------------------------------------------------------
# Wording: every phrase below reads back (read_claims) as the band it was written from
# ---------------------------------------------------------------------------------------

_COVERAGE = (  # (lowest tissue fraction, participle phrases)
    (0.9, ("filling the entire field", "covering the whole field", "filling the field edge to edge")),
    (0.6, ("occupying most of the field", "covering most of the field", "taking up most of the view")),
    (0.35, ("covering roughly half of the field", "occupying about half of the field")),
    (0.0, ("covering only a small part of the field", "occupying a small part of the field")),
)
_OPENING = (
    "This H&E-stained image shows {site} {coverage}.",
    "The H&E-stained section contains {site} {coverage}.",
    "In this H&E-stained section, {site} is seen {coverage}.",
    "The field is an H&E-stained view of {site}, {coverage}.",
    "At this magnification the H&E-stained slide shows {site} {coverage}.",
    "Haematoxylin and eosin staining highlights {site} {coverage}.",
)
_EMPTY = (
    "This H&E-stained image is almost entirely empty, with only small fragments of {site} "
    "and no assessable cellular detail.",
    "The H&E-stained field is largely empty and contains almost no {site}; only small "
    "fragments are present, too few to assess cellular detail.",
    "Very little {site} is present in this H&E-stained field, which is mostly empty glass.",
)
_CELLULARITY = {
    "high": (
        "The tissue is densely cellular, with nuclei closely packed throughout much of the "
        "field and little room between neighbouring cells.",
        "Cellularity is high: the tissue is densely cellular, with neighbouring nuclei almost "
        "touching.",
        "The field is highly cellular and composed of closely packed cells.",
        "It is a hypercellular field in which crowded nuclei leave little space between cells.",
    ),
    "moderate": (
        "Cellularity is moderate, with nuclei separated by intervening tissue rather than "
        "touching one another.",
        "The tissue is moderately cellular, with nuclei spread fairly evenly across the field.",
        "The tissue shows moderate cellularity, with nuclei distributed across the field.",
        "Nuclei are spaced at intervals, giving the tissue a moderate cellularity.",
    ),
    "low": (
        "The tissue is sparsely cellular, with few nuclei scattered through it and wide "
        "intervals between neighbouring cells.",
        "Cellularity is low: the tissue is sparsely cellular, its nuclei widely separated.",
        "The tissue is of low cellularity, with nuclei set far apart from one another.",
        "This is a hypocellular field: only a few nuclei interrupt the tissue.",
    ),
}
_COVERAGE_SENTENCES = (  # (lowest tissue fraction, sentences ending a caption)
    (0.9, ("Tissue fills the whole field.", "The tissue fills the frame edge to edge.",
           "The section covers the entire frame.", "Tissue spans the full width of the view.",
           "Tissue extends across the entire image.", "The specimen fills the image completely.")),
    (0.6, ("Tissue covers most of the field.", "Most of the frame is occupied by tissue.",
           "The tissue takes up the greater part of the view.",
           "The larger part of the image shows tissue.",
           "Tissue occupies the bulk of the patch.", "Tissue accounts for most of the image.",
           "The section occupies much of the frame.")),
    (0.35, ("Tissue covers about half of the field.", "Roughly half of the frame holds tissue.",
            "About half of the view is taken up by tissue.",
            "Around half of the patch is tissue.")),
    (0.0, ("Tissue covers only part of the field.", "Only part of the frame holds tissue.",
           "Tissue is confined to a limited part of the image.")),
)
_SIZE = {"small": "small", "medium": "medium-sized", "large": "large"}
_SIZES = {
    "small": ("small", "small-sized"),
    "medium": ("medium-sized", "intermediate-sized", "moderately sized"),
    "large": ("large", "enlarged"),
}
_PLEOMORPHISM = {
    "mild": ("mild pleomorphism", "little variation in nuclear size", "minimal pleomorphism",
             "slight variation in nuclear size", "minor variation in nuclear size",
             "mild anisonucleosis", "slight variability in nuclear size"),
    "moderate": ("moderate pleomorphism", "moderate variation in nuclear size",
                 "some variation in nuclear size", "moderate nuclear pleomorphism",
                 "moderate anisonucleosis", "moderate variability in nuclear size"),
    "marked": ("marked pleomorphism", "marked variation in nuclear size",
               "striking pleomorphism", "pronounced variation in nuclear size",
               "considerable variation in nuclear size", "severe nuclear pleomorphism",
               "marked anisonucleosis", "considerable variability in nuclear size"),
}
_NUCLEI_SENTENCE = (
    "The nuclei are predominantly {size} and show {pleomorphism} from one cell to the next.",
    "Most nuclei are {size}, with {pleomorphism} across the cell population.",
    "{Size} nuclei predominate and display {pleomorphism} throughout the field.",
    "{Size} nuclei make up most of the population, with {pleomorphism}.",
)
_STROMA_SENTENCE = {
    "abundant": (
        "Abundant eosinophilic stroma or cytoplasm occupies much of the tissue, giving the "
        "field a predominantly pink appearance.",
        "There is abundant pink, eosinophilic material, in keeping with stroma or cytoplasm, "
        "and it outweighs the haematoxylin-stained areas.",
        "Extensive eosinophilic stroma or cytoplasm dominates the tissue.",
    ),
    "moderate": (
        "A moderate amount of eosinophilic stroma or cytoplasm lies between the "
        "haematoxylin-stained cellular areas.",
        "There is a moderate amount of pink, eosinophilic stroma or cytoplasm between the "
        "purple, haematoxylin-rich areas.",
        "Between the cellular areas lies a moderate amount of stroma or pink cytoplasm.",
    ),
    "scant": (
        "Only scant eosinophilic stroma or cytoplasm is seen between the cells, so the "
        "tissue appears predominantly purple.",
        "There is little eosinophilic stroma or cytoplasm between the nuclei, and "
        "haematoxylin-stained areas dominate the tissue.",
        "Minimal stroma separates the cells, and the haematoxylin-stained areas prevail.",
    ),
}
_FINDING_SENTENCE = {
    "keratin": (
        "Layers of anucleate keratin are present in part of the field.",
        "Keratin lamellae, free of nuclei, occupy part of the field.",
        "Part of the field is taken up by compact, anucleate keratin.",
    ),
    "collagen": (
        "Bundles of collagen fibres run through the tissue.",
        "Collagen bundles are seen between the cells.",
        "Wavy collagen fibres form part of the tissue.",
    ),
    "ink": (
        "Tissue-marking ink is present in the field.",
        "Traces of tissue-marking ink are seen, a handling artefact.",
        "Some marking ink lies on the tissue.",
    ),
}
_LUMEN_SENTENCE = {
    "absent": (
        "No clear spaces are seen within the tissue, which appears solid throughout the field.",
        "The tissue is solid, without clear spaces, and fills the field without gaps.",
        "There are no white spaces in the tissue, which is solid throughout.",
    ),
    "focal": (
        "A few clear spaces are present, but tissue occupies most of the field.",
        "Occasional clear spaces are present, while the rest of the field is filled by tissue.",
        "A few white spaces interrupt the tissue here and there.",
    ),
    "prominent": (
        "Prominent clear spaces take up much of the field between the pieces of tissue.",
        "Extensive white spaces occupy a substantial part of the field around the tissue.",
        "Conspicuous open spaces separate the pieces of tissue.",
    ),
}
_INFLAMMATION_SENTENCE = (
    "Numerous compact, round, darkly stained nuclei suggest a possible lymphocytic infiltrate.",
    "Clusters of round, darkly stained nuclei raise the possibility of an inflammatory infiltrate.",
    "Round, darkly stained nuclei gathered in groups hint at a possible inflammatory infiltrate.",
)
_NO_INFLAMMATION_SENTENCE = (
    "No dense infiltrate of lymphocyte-like nuclei is seen.",
    "No dense inflammatory infiltrate is evident among the cells.",
)
_CELLULAR_ADJECTIVE = {
    "high": "densely cellular",
    "moderate": "moderately cellular",
    "low": "sparsely cellular",
    "unknown": "H&E-stained",  # no scale, no cellularity claim
}
_CELLULAR_ADJECTIVES = {
    "high": ("densely cellular", "highly cellular", "hypercellular", "markedly cellular"),
    "moderate": ("moderately cellular",),
    "low": ("sparsely cellular", "hypocellular", "paucicellular", "poorly cellular"),
}
_CELLULARITY_NOUNS = {
    "high": ("high cellularity",),
    "moderate": ("moderate cellularity", "intermediate cellularity"),
    "low": ("low cellularity",),
}
_SUBJECT_FORMS = ("adjective", "adjective", "noun")  # "densely cellular tissue" / "tissue of ..."
_STROMA_PHRASE = {
    "abundant": "abundant eosinophilic stroma",
    "moderate": "a moderate amount of eosinophilic stroma",
    "scant": "scant eosinophilic stroma",
}
_STROMA_PHRASES = {
    "abundant": ("abundant eosinophilic stroma", "abundant stroma", "extensive stroma",
                 "plentiful eosinophilic stroma", "copious stroma", "prominent stroma",
                 "rich pink stroma"),
    "moderate": ("a moderate amount of eosinophilic stroma", "a moderate amount of stroma",
                 "moderate amounts of stroma", "moderate stroma",
                 "a moderate quantity of pink stroma"),
    "scant": ("scant eosinophilic stroma", "scant stroma", "little stroma", "minimal stroma",
              "sparse stroma", "scanty stroma", "scarce stroma", "only a little stroma"),
}
_FINDING_PHRASES = {
    "keratin": ("keratin", "anucleate keratin", "keratin lamellae", "compact keratin",
                "laminated keratin", "cornified material", "keratinous material"),
    "collagen": ("collagen bundles", "collagen fibres", "bundles of collagen", "wavy collagen",
                 "collagenous fibres"),
    "ink": ("tissue-marking ink", "marking ink", "traces of marking ink", "deposits of marking ink"),
}
_CLOSING = (
    "Overall, the field shows {cellular} tissue{nuclei} with {stroma}.",
    "In summary, this is {cellular} tissue{nuclei} with {stroma}.",
    "Taken together, the picture is of {cellular} tissue{nuclei} and {stroma}.",
    "The overall impression is {cellular} tissue{nuclei} with {stroma}.",
)
_PLEOMORPHIC = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}
_PLEOMORPHIC_ADVERBS = {
    "mild": ("mildly", "slightly"), "moderate": ("moderately",), "marked": ("markedly", "highly")
}
_SPACES_PHRASE = {
    "absent": "no clear spaces",
    "focal": "a few clear spaces",
    "prominent": "prominent clear spaces",
}
_SPACES_PHRASES = {
    "absent": ("no clear spaces", "no white spaces", "no open spaces", "no empty areas",
               "no optically clear spaces"),
    "focal": ("a few clear spaces", "occasional clear spaces", "scattered white spaces",
              "focal clear areas", "some open spaces", "rare clear spaces",
              "isolated empty areas"),
    "prominent": ("prominent clear spaces", "extensive white spaces", "conspicuous clear areas",
                  "numerous open spaces", "wide empty spaces", "many clear spaces",
                  "extensive open areas"),
}
_INFLAMMATION_PHRASE = {
    "none": "no inflammatory infiltrate",
    "possible": "a possible lymphocytic infiltrate",
}
_INFLAMMATION_PHRASES = {
    "none": ("no inflammatory infiltrate",),
    "possible": ("a possible lymphocytic infiltrate", "a possible inflammatory infiltrate",
                 "a possible immune cell infiltrate", "a suspected lymphocytic infiltrate",
                 "features suggesting a lymphocytic infiltrate"),
}

# Site-aware phrasing: TCGA codes of the prompt library and plain organ names, each with
# the nouns the lexicon's ``sites`` category knows (so the quality checks can judge them).
_SITES: dict[str, tuple[str, str]] = {  # key -> (organ noun, adjective)
    "luad": ("lung", "pulmonary"), "lusc": ("lung", "pulmonary"), "lung": ("lung", "pulmonary"),
    "brca": ("breast", "mammary"), "breast": ("breast", "mammary"),
    "coad": ("colon", "colonic"), "read": ("colon", "colonic"), "colon": ("colon", "colonic"),
    "prad": ("prostate", "prostatic"), "prostate": ("prostate", "prostatic"),
    "kirc": ("kidney", "renal"), "kidney": ("kidney", "renal"),
    "skcm": ("skin", "cutaneous"), "skin": ("skin", "cutaneous"),
    "lihc": ("liver", "hepatic"), "liver": ("liver", "hepatic"),
    "thca": ("thyroid", "thyroid"), "thyroid": ("thyroid", "thyroid"),
    "gbm": ("brain", "cerebral"), "brain": ("brain", "cerebral"),
    "stad": ("stomach", "gastric"), "stomach": ("stomach", "gastric"),
    "blca": ("bladder", "bladder"), "bladder": ("bladder", "bladder"),
}
_SITE_FORMS = ("{noun} tissue", "{adjective} tissue", "tissue from the {noun}")

# Sentence plans of a description: the order of its slots after the opening. Cells always
# come before the stroma (PathGen's teacher prompt: cell morphology first); what follows
# them, and whether a closing impression ends the text, varies with the seed.
# Only validated findings are ever worded: the registry (findings.VALIDATED) is the gate.
_FINDING_SLOTS = tuple(n for n in ("keratin", "collagen", "ink") if n in findings.VALIDATED)
_SLOTS = ("cellularity", "nuclei", "stroma", *_FINDING_SLOTS, "lumen", "inflammation")
_PLANS = (
    ("cellularity", "nuclei", "stroma", *_FINDING_SLOTS, "lumen", "inflammation", "closing"),
    ("cellularity", "nuclei", *_FINDING_SLOTS, "stroma", "inflammation", "lumen", "closing"),
    ("cellularity", "nuclei", "inflammation", "stroma", *_FINDING_SLOTS, "lumen"),
    ("cellularity", *_FINDING_SLOTS, "nuclei", "stroma", "lumen", "inflammation", "closing"),
    ("cellularity", "inflammation", "nuclei", "stroma", "lumen", *_FINDING_SLOTS),
    ("cellularity", "nuclei", "stroma", "lumen", "inflammation", *_FINDING_SLOTS, "closing"),
)


def _pick(options: Sequence[str], seed: str, slot: str) -> str:
    """One of ``options``, chosen by a hash of (seed, slot): stable, varied across seeds."""
    digest = hashlib.sha256(f"{seed}\x1f{slot}".encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def _known_site(tissue_site: str | None) -> tuple[str, str] | None:
    return _SITES.get((tissue_site or "").strip().lower().removeprefix("tcga-"))


def _site_phrase(tissue_site: str | None, seed: str | None = None) -> str:
    """'lung tissue' / 'pulmonary tissue' for a known site, 'tissue' when the site is unknown."""
    known = _known_site(tissue_site)
    if known is not None:
        form = _pick(_SITE_FORMS, seed, "site") if seed is not None else _SITE_FORMS[0]
        return form.format(noun=known[0], adjective=known[1])
    site = (tissue_site or "").strip()
    if not site or site.lower() == "generic":
        return "tissue"
    if site[:1].isupper() and not site[1:2].isupper():  # "Lung" -> "lung", keep "TCGA"
        site = site[0].lower() + site[1:]
    return site if site.endswith("tissue") else f"{site} tissue"


def _site_in(description: str) -> str | None:
    """The site a description names (its organ noun or adjective), or None."""
    for key, (noun, adjective) in _SITES.items():
        if re.search(rf"\b(?:{noun}|{adjective})\b", description, re.IGNORECASE):
            return key
    return None


# Stroma is "scant" by the eosin share of the tissue, but a tile that is part epidermis and
# part dermis can show plain collagen while eosin stays under the cut (seen on CMU tiles
# next to their captions, issue 10). Where the collagen detector measures at least this
# share, "scant stroma" is not written (nothing is said of the amount instead). And where
# the validated collagen detector finds collagen, no amount short of "abundant" is written
# either: in a claim-by-claim review of 20 demo patches, 6 of the 7 stroma amounts the
# pixels did not support were "moderate" or "little" stroma in dermis that collagen filled
# (the eosin share of a whole 672 px tile runs 0.46-0.54 there; its edges were fitted on
# 96 px crops). The collagen finding itself is still worded.
SCANT_STROMA_MAX_COLLAGEN = 0.15


def _stroma_sayable(facts: MorphologyFacts) -> bool:
    """Whether the stroma band may be worded: tissue, no "scant" where collagen shows and
    nothing short of "abundant" where the collagen detector finds collagen."""
    collagen = facts.collagen_fraction
    if not _has_tissue(facts):
        return False
    if not math.isfinite(collagen):  # facts measured before the finding detectors
        return True
    if facts.stroma == "scant" and collagen >= SCANT_STROMA_MAX_COLLAGEN:
        return False
    return facts.stroma == "abundant" or _label(facts, "collagen") != findings.PRESENT


def _slot_sentences(
    slot: str, facts: MorphologyFacts, seed: str, *, correcting: bool = False
) -> list[str]:
    """The sentence(s) one slot of a description says about ``facts`` (may be none).

    A description leaves an absent infiltrate or finding unsaid; a correction of a draft
    that claimed an infiltrate (``correcting``) says it is absent.
    """
    if slot == "cellularity" and _has_scaled_tissue(facts):
        return [_pick(_CELLULARITY[facts.cellularity], seed, slot)]
    if slot == "nuclei" and _has_nuclei(facts) and _has_tissue(facts):
        template = _pick(_NUCLEI_SENTENCE, seed, slot)
        size = _pick(_SIZES[facts.nuclear_size], seed, "size")
        pleomorphism = _pick(_PLEOMORPHISM[facts.pleomorphism], seed, "pleomorphism")
        return [template.format(size=size, Size=size.capitalize(), pleomorphism=pleomorphism)]
    if slot == "stroma" and _stroma_sayable(facts):
        return [_pick(_STROMA_SENTENCE[facts.stroma], seed, slot)]
    if slot in _FINDING_SLOTS:
        rule = RULES_BY_CLAIM.get(slot)
        if rule and rule.assessable(facts) and _label(facts, slot) == findings.PRESENT:
            return [_pick(_FINDING_SENTENCE[slot], seed, slot)]
        return []
    if slot == "lumen":
        return [_pick(_LUMEN_SENTENCE[facts.lumen_or_fat], seed, slot)]
    if slot == "inflammation" and _has_tissue(facts) and _worded("inflammation_hint"):
        if facts.inflammation_hint == "possible":
            return [_pick(_INFLAMMATION_SENTENCE, seed, slot)]
        if correcting:
            return [_pick(_NO_INFLAMMATION_SENTENCE, seed, slot)]
    return []


# Which description slot words each band or finding.
_SLOT_OF_CLAIM = {
    "cellularity": "cellularity",
    "nuclear_size": "nuclei",
    "pleomorphism": "nuclei",
    "stroma": "stroma",
    "lumen_or_fat": "lumen",
    "inflammation_hint": "inflammation",
    **{name: name for name in _FINDING_SLOTS},
}


def describe(facts: MorphologyFacts, *, tissue_site: str | None, seed: str) -> str:
    """A PathGen-style detailed description of one patch, worded from its measured facts.

    Cells and tissue come first (cellularity, nuclear size and pleomorphism), then, in an
    order the seed picks from :data:`_PLANS`, stroma, validated findings (keratin,
    collagen, marking ink), clear spaces and a possible infiltrate, often ending with a
    one-line overall impression; about 80-150 words for a patch of tissue, fewer for a
    nearly empty one. Only measured bands and validated findings are stated; nuclear
    detail is left out when too few nuclei were found.

    Args:
        facts: the patch's measured morphology.
        tissue_site: organ or TCGA study of the slide ("lung", "LUAD"), or None when unknown.
        seed: picks the wording (use the patch id): the same seed gives the same text.
    """
    site = _site_phrase(tissue_site, seed)
    if not _has_tissue(facts):
        return " ".join(
            [
                _pick(_EMPTY, seed, "opening").format(site=site),
                *_slot_sentences("lumen", facts, seed),
            ]
        )
    coverage = next(p for low, p in _COVERAGE if facts.tissue_fraction >= low)
    opening = _pick(_OPENING, seed, "opening").format(
        site=site, coverage=_pick(coverage, seed, "coverage")
    )
    sentences = [opening]
    for slot in _pick(_PLANS, seed, "plan"):
        if slot == "closing" and _stroma_sayable(facts):
            sentences.append(_closing(facts, seed))
        else:
            sentences += _slot_sentences(slot, facts, seed)
    return " ".join(sentences)


def _closing(facts: MorphologyFacts, seed: str) -> str:
    nuclei = (
        f" containing {_pick(_SIZES[facts.nuclear_size], seed, 'size')}, "
        f"{_PLEOMORPHIC[facts.pleomorphism]} pleomorphic nuclei"
        if _has_nuclei(facts)
        else ""
    )
    return _pick(_CLOSING, seed, "closing").format(
        cellular=_CELLULAR_ADJECTIVE[facts.cellularity],
        nuclei=nuclei,
        stroma=_pick(_STROMA_PHRASES[facts.stroma], seed, "closing-stroma"),
    )


def revise(draft: str, facts: MorphologyFacts, *, seed: str) -> tuple[str, list[dict[str, str]]]:
    """(corrected description, edit log) after checking each draft sentence against facts.

    A sentence with a contradicted or unsupportable claim is rewritten from the facts
    (``modify``) when it makes any claim the facts can assess, and removed (``delete``)
    otherwise; a salient measured feature (high or low cellularity, large or small
    nuclei, marked pleomorphism, abundant stroma, prominent clear spaces, a possible
    infiltrate) that the text never mentions is inserted where describe would put it
    (``add``). Sentences without claims are kept as they are.

    Args:
        draft: the description to check.
        facts: the patch's measured morphology.
        seed: picks the wording of rewritten and added sentences.

    Returns:
        The revised text and its edits, each ``{"op", "span", "replacement", "reason"}``:
        ``span`` is the draft sentence ("" for an add), ``replacement`` the new text
        ("" for a delete).
    """
    kept: list[str] = []
    edits: list[dict[str, str]] = []
    for sentence in split_sentences(draft):
        claims = _sentence_claims(sentence)
        problems = [(c, r) for c in claims if (r := _verdict(c, facts)) is not None]
        if not problems:
            kept.append(sentence)
            continue
        reason = "; ".join(f"{c.phrase!r}: {r}" for c, r in problems)
        slots = [
            _SLOT_OF_CLAIM[c.claim]
            for c in claims
            if c.claim in RULES_BY_CLAIM and RULES_BY_CLAIM[c.claim].assessable(facts)
        ]
        rewritten = [
            s
            for slot in dict.fromkeys(slots)
            for s in _slot_sentences(slot, facts, seed, correcting=True)
            if s not in kept  # two wrong sentences about one band get one correction
        ]
        if rewritten:
            replacement = " ".join(rewritten)
            edits.append(_edit("modify", sentence, replacement, reason))
            kept.append(replacement)
        else:
            edits.append(_edit("delete", sentence, "", reason))
    mentioned = {c.claim for c in read_claims(" ".join(kept))}
    for rule in CLAIM_RULES:
        label = _label(facts, rule.claim)
        if (
            rule.claim in mentioned
            or label not in rule.salient
            or not rule.assessable(facts)
            or not _worded(rule.claim)
        ):
            continue
        added = [
            s for s in _slot_sentences(_SLOT_OF_CLAIM[rule.claim], facts, seed) if s not in kept
        ]
        if added:
            text = " ".join(added)
            reason = (
                f"{rule.claim.replace('_', ' ')} is {label} ({rule.evidence(facts)}) "
                "and the draft does not say so"
            )
            edits.append(_edit("add", "", text, reason))
            kept.insert(_position_for(_SLOT_OF_CLAIM[rule.claim], kept), text)
            mentioned |= {c.claim for c in read_claims(text)}
    if not edits:  # nothing changed: hand the draft back exactly as it was written
        return draft.strip(), []
    return " ".join(kept), edits


def _position_for(slot: str, sentences: list[str]) -> int:
    """Where a sentence for ``slot`` goes: before the first one about a later slot.

    Keeps a revised description in describe's order, cells first.
    """
    order = _SLOTS.index(slot)
    for i, sentence in enumerate(sentences):
        slots = {_SLOT_OF_CLAIM.get(c.claim) for c in _sentence_claims(sentence)}
        if any(s is not None and _SLOTS.index(s) > order for s in slots):
            return i
    return len(sentences)


def _edit(op: EditOp, span: str, replacement: str, reason: str) -> dict[str, str]:
    return {"op": op, "span": span, "replacement": replacement, "reason": reason}


def summarize(
    description: str,
    facts: MorphologyFacts,
    *,
    seed: str,
    max_words: int = 40,
    tissue_site: str | None = None,
) -> str:
    """A CLIP caption of ``description``, inside CLIP's 77-token window.

    The caption restates only claims that the description makes and the facts support.
    Its frame (:data:`_FRAMES`), the order of its phrases and their wording vary with the
    seed; when it is too long, the least important phrases are dropped first (clear
    spaces, then the infiltrate, findings, stroma and nuclei) until it has at most
    ``max_words`` words and fits 77 CLIP tokens. The site is named only when the
    description names it (and, if ``tissue_site`` is given, only that site).

    Args:
        description: the (revised) description to condense.
        facts: the patch's measured morphology.
        seed: picks the wording.
        max_words: word budget (PathGen's captions averaged ~50 words and overflowed CLIP).
        tissue_site: the slide's site; when None, the site the description names is used.
    """
    lexicon = get_lexicon()

    def choose(options: dict[str, Sequence[str]], label: str | None, slot: str) -> str | None:
        # Only wordings whose findings the description names too (the caption-quality
        # gate's lexicon rule): "hypocellular" needs a hypocellular synonym there.
        if label not in options:
            return None
        fitting = [o for o in options[label] if not lexicon.unsupported_claims(o, description)]
        return _pick(fitting, seed, slot) if fitting else None

    said: dict[str, str] = {}
    for claim in read_claims(description):
        label = _label(facts, claim.claim) if claim.claim in RULES_BY_CLAIM else None
        if (
            claim.claim not in said
            and _worded(claim.claim)
            and label in claim.labels
            and _verdict(claim, facts) is None
        ):
            said[claim.claim] = label
    if tissue_site is None:
        site_key = _site_in(description)
    else:
        site_key = tissue_site if _mentions_site(description, tissue_site) else None
    site = _site_phrase(site_key, seed)
    empty = not _has_tissue(facts) and bool(re.search(r"\bempty\b", description, re.I))
    cellular = choose(_CELLULAR_ADJECTIVES, said.get("cellularity"), "cellular")
    cellularity = choose(_CELLULARITY_NOUNS, said.get("cellularity"), "cellularity")
    if cellularity and site.endswith("tissue") and _pick(_SUBJECT_FORMS, seed, "c-form") == "noun":
        subject = f"{site} of {cellularity}"  # "tissue of intermediate cellularity"
    elif cellular:
        subject = f"{cellular} {site}"
    elif empty:
        subject = f"nearly empty field with little {site}"
    elif re.search(r"H&E|haematoxylin and eosin", description, re.I):
        subject = f"H&E-stained {site}"
    else:
        subject = site
    items = [  # (importance: higher is kept longer, phrase), in the order the seed picks
        (priority, phrase)
        for priority, phrase in (
            (5, _nuclei_phrase(said, seed, choose)),
            *((2, choose(_FINDING_PHRASES, n, f"c-{n}")) for n in _FINDING_SLOTS if n in said),
            (4, choose(_STROMA_PHRASES, said.get("stroma"), "c-stroma")),
            (3, choose(_INFLAMMATION_PHRASES, said.get("inflammation_hint"), "c-infl")),
        )
        if phrase
    ]
    items = _ordered(items, seed)
    spaces = choose(_SPACES_PHRASES, said.get("lumen_or_fat"), "c-spaces")
    if spaces:  # always last: its qualifiers must not reach a later noun
        items.append((1, spaces))
    frames = [f for f in _FRAMES if not lexicon.unsupported_claims(f, description)]
    tokenizer = get_tokenizer()
    # How much of the field the tissue covers (the description's opening says it too), as a
    # closing sentence: the first thing dropped when the caption is too long.
    coverage = None if empty else _pick(
        next(s for low, s in _COVERAGE_SENTENCES if facts.tissue_fraction >= low), seed, "c-cover"
    )
    while True:
        caption = _caption(subject, [phrase for _, phrase in items], seed, frames, joined=empty)
        caption = f"{caption} {coverage}" if coverage else caption
        if (len(caption.split()) <= max_words and tokenizer.fits(caption)) or not (
            items or coverage
        ):
            return caption
        if coverage:
            coverage = None
        else:
            items.remove(min(items, key=lambda item: item[0]))


def _mentions_site(description: str, tissue_site: str) -> bool:
    known = _known_site(tissue_site)
    words = known if known else (tissue_site.strip(),)
    return any(re.search(rf"\b{re.escape(w)}\b", description, re.I) for w in words if w)


# Caption orders: which phrase leads (indices into the importance-sorted phrases).
_ORDERS = ((0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0))


def _ordered(items: list[tuple[int, str]], seed: str) -> list[tuple[int, str]]:
    """The phrases in the seed's order: the three most important lead in one of
    :data:`_ORDERS`, the rest follow by importance."""
    ranked = sorted(items, key=lambda item: -item[0])
    head, tail = ranked[:3], ranked[3:]
    return [head[i] for i in _pick(_ORDERS, seed, "c-order") if i < len(head)] + tail


def _nuclei_phrase(said: dict[str, str], seed: str, choose: Callable) -> str | None:
    size, pleomorphism = said.get("nuclear_size"), said.get("pleomorphism")
    size_word = choose(_SIZES, size, "c-size")
    if pleomorphism:
        options = {
            "with": [f"nuclei with {v}" for v in _PLEOMORPHISM[pleomorphism]],
            "adverb": [f"{a} pleomorphic nuclei" for a in _PLEOMORPHIC_ADVERBS[pleomorphism]],
        }
        form = _pick(("with", "adverb"), seed, "c-nuclei")
        nuclei = choose(options, form, "pleomorphism") or choose(options, "with", "pleomorphism")
        if nuclei and size_word:
            return nuclei.replace("nuclei", f"{size_word} nuclei", 1) if form == "adverb" else (
                f"{size_word} {nuclei}"
            )
        if nuclei:
            return nuclei
    return f"{size_word} nuclei" if size_word else None


# Caption frames: {subject} is e.g. "densely cellular skin tissue", {listed} the phrases.
_FRAMES = (
    "{Subject} with {listed}.",
    "{Subject} containing {listed}.",
    "{Subject} showing {listed}.",
    "{Subject}: {listed}.",
    "{Subject}, with {listed}.",
    "{Subject} displaying {listed}.",
    "{Subject} featuring {listed}.",
    "H&E image of {subject} with {listed}.",
    "Photomicrograph of {subject} showing {listed}.",
    "{Listed} in {subject}.",
    "{Subject}. It shows {listed}.",
    "Section of {subject} that contains {listed}.",
    "Microscopic view of {subject} with {listed}.",
    "Histological section of {subject} showing {listed}.",
    "{Subject} exhibiting {listed}.",
    "{Subject} characterised by {listed}.",
    "{Subject} presenting {listed}.",
    "Histology image of {subject} revealing {listed}.",
    "Pathology image of {subject} demonstrating {listed}.",
    "Close-up of {subject} depicting {listed}.",
    "Field of {subject} notable for {listed}.",
    "Stained section of {subject}, with {listed}.",
    "{Subject}; the field contains {listed}.",
    "Microscopy of {subject} that displays {listed}.",
    "{Listed} can be seen in {subject}.",
    "Image of {subject} including {listed}.",
    "Light micrograph of {subject} with {listed}.",
    "Detail of {subject} revealing {listed}.",
    "Haematoxylin and eosin stained {subject} with {listed}.",
    "Slide region of {subject} showing {listed}.",
    "{Subject}; noted are {listed}.",
)


_NAMES_THE_IMAGE = re.compile(
    r"H&E|Haematoxylin|Photomicrograph|micrograph|Microscop|image|section|view|Close-up|Field"
    r"|Detail|Slide"
)


def _caption(
    subject: str, parts: list[str], seed: str, frames: Sequence[str], *, joined: bool = False
) -> str:
    if not parts:
        return f"{subject[0].upper()}{subject[1:]}."
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    if joined:  # "Nearly empty field with little tissue and prominent clear spaces."
        return f"{subject[0].upper()}{subject[1:]} and {listed}."
    frame = _pick(frames or _FRAMES[:1], seed, "caption")
    if "with {listed}" in frame:  # not "with large nuclei with marked pleomorphism"
        listed = listed.replace(" nuclei with ", " nuclei showing ", 1)
    if _NAMES_THE_IMAGE.search(frame):  # not "section of H&E-stained tissue"
        subject = subject.removeprefix("H&E-stained ")
    return frame.format(
        subject=subject,
        Subject=f"{subject[0].upper()}{subject[1:]}",
        listed=listed,
        Listed=f"{listed[0].upper()}{listed[1:]}",
    )


def facts_sentence(facts: MorphologyFacts, tissue_site: str | None = None) -> str:
    """One plain sentence of the measured morphology, the same for the same facts.

    Used as the text side of retrieval and of image-text alignment in the weight-free
    default mode. States every band the facts can assess and every validated finding
    present, in a fixed order.
    """
    site = _site_phrase(tissue_site)
    if not _has_tissue(facts):
        return f"H&E field with little {site} and {_SPACES_PHRASE[facts.lumen_or_fat]}."
    parts = [f"{facts.cellularity} cellularity"] if facts.scale_known else []
    if _has_nuclei(facts):
        parts.append(f"{_SIZE[facts.nuclear_size]} nuclei with {facts.pleomorphism} pleomorphism")
    parts += [
        _STROMA_PHRASE[facts.stroma],
        *(
            _FINDING_PHRASES[name][0]
            for name in _FINDING_SLOTS
            if RULES_BY_CLAIM[name].assessable(facts) and _label(facts, name) == findings.PRESENT
        ),
        *(
            [_INFLAMMATION_PHRASE[facts.inflammation_hint]]
            if facts.scale_known and _worded("inflammation_hint")
            else []
        ),
        _SPACES_PHRASE[facts.lumen_or_fat],
    ]
    return f"H&E {site} with {', '.join(parts[:-1])} and {parts[-1]}."
