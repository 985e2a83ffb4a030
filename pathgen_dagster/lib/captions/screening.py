"""Cheap text screens for agent outputs: what makes a description or caption unusable.

Each rule is a named check in :data:`RULES`; :func:`screen_output` returns the first that
fires as ``"<rule name>: <detail>"`` so the failure row records which rule caught it. These
screens only catch broken generations (refusals, loops, truncation, chat-speak); whether a
fluent description is *true* to its patch is checked elsewhere.

Apply them to plain text: for the revise agent, to ``Revision.revised`` after parsing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

META_PHRASES: tuple[str, ...] = (
    "as an ai",
    "language model",
    "i cannot",
    "i can't",
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "the additional description",
    "based on the given description",
    "based on the provided",
    "auxiliary",
    "measured facts",
    "the facts provided",
    "the provided facts",
    "the given facts",
    "more information",
)
"""Refusals and talk about the prompt itself (PathGen's teacher prompt forbade these)."""

HISTOLOGY_STEMS: tuple[str, ...] = (
    "acin", "adipo", "alveol", "architect", "atyp", "basophil", "capillar", "carcinom",
    "cell", "chromatin", "collagen", "crypt", "cyto", "duct", "endotheli", "eosin",
    "epitheli", "erythrocyt", "fibro", "follic", "gland", "hematoxylin",
    "haematoxylin", "hemorrh", "haemorrh", "histiocyt", "hyperchrom", "infiltrat",
    "inflamm", "kerat", "lobul", "lumen", "lumin", "lymph", "macrophag", "mitos", "mitot",
    "morpholog", "mucin", "mucos", "mucous", "muscle", "necro", "neoplas", "nucle",
    "papill", "parenchym", "pleomorph", "squamous", "stain", "strom", "tissue", "trabecul",
    "tubul", "tumor", "tumour", "vascul", "vessel",
)  # fmt: skip
"""Word stems of which any histology text has at least one (prefix match on words)."""

ENGLISH_FUNCTION_WORDS = frozenset(
    ("a", "an", "and", "are", "as", "at", "by", "for", "from", "in", "is", "of", "on", "or",
     "the", "to", "with"),
)  # fmt: skip
"""Frequent English words; prose in another language has almost none of them."""

REPEAT_NGRAM = 3
"""Length in words of the n-grams counted by the repetition rule."""

REPEAT_MIN_COUNT = 4
"""An n-gram seen this often marks a generation loop (SmolLM2 repeats phrases to the limit)."""

_PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z _-]{2,40}>|\[[A-Z][A-Za-z _-]{2,40}\]")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_QUESTION = re.compile(r"\?(?=\s|$|[\"')\]])")
_LIST_LINE = re.compile(r"^\s*(?:[-*+•]\s|\d+[.)]\s|#{1,6}\s|>\s|\|)", re.MULTILINE)
_MARKDOWN = re.compile(r"\*\*|__|```|`[^`]+`|^\s*[-=]{3,}\s*$", re.MULTILINE)
# Micrometres are written with the micro sign or the Greek mu: not a sign of another language.
_ENGLISH_NON_ASCII_LETTERS = frozenset("\u00b5\u03bc")


@dataclass(frozen=True)
class ScreeningRule:
    """A named screen: ``check(text, finish_reason)`` returns a detail when the text fails."""

    name: str
    description: str
    check: Callable[[str, str | None], str | None]


def _empty(text: str, finish_reason: str | None) -> str | None:
    return "no text" if not text.strip() else None


def _truncated(text: str, finish_reason: str | None) -> str | None:
    return "finish_reason is 'length'" if finish_reason == "length" else None


def _refusal_or_meta(text: str, finish_reason: str | None) -> str | None:
    lowered = text.lower().replace("\u2019", "'")
    found = [phrase for phrase in META_PHRASES if phrase in lowered]
    return f"contains {found[0]!r}" if found else None


def _placeholder(text: str, finish_reason: str | None) -> str | None:
    found = _PLACEHOLDER.search(text)
    return f"copies the placeholder {found.group(0)!r}" if found else None


def _question(text: str, finish_reason: str | None) -> str | None:
    return "a sentence ends with '?'" if _QUESTION.search(text) else None


def _repetition(text: str, finish_reason: str | None) -> str | None:
    words = _words(text)
    ngrams = Counter(zip(*(words[i:] for i in range(REPEAT_NGRAM)), strict=False))
    if not ngrams:
        return None
    ngram, count = ngrams.most_common(1)[0]
    if count < REPEAT_MIN_COUNT:
        return None
    return f"{' '.join(ngram)!r} occurs {count} times"


def _non_english(text: str, finish_reason: str | None) -> str | None:
    letters = [char for char in text if char.isalpha()]
    foreign = [c for c in letters if not c.isascii() and c not in _ENGLISH_NON_ASCII_LETTERS]
    if letters and len(foreign) / len(letters) > 0.05:
        return f"{len(foreign)} of {len(letters)} letters are not ASCII"
    words = _words(text)
    # Short captions may legitimately lack function words; judge only real sentences.
    if len(words) >= 12 and sum(word in ENGLISH_FUNCTION_WORDS for word in words) < 2:
        return "almost no English function words"
    return None


def _formatting(text: str, finish_reason: str | None) -> str | None:
    for pattern, what in ((_LIST_LINE, "list, heading or table line"), (_MARKDOWN, "markdown")):
        found = pattern.search(text)
        if found:
            return f"{what}: {found.group(0).strip()!r}"
    return None


def _off_topic(text: str, finish_reason: str | None) -> str | None:
    words = _words(text)
    if any(word.startswith(HISTOLOGY_STEMS) for word in words):
        return None
    return "no histology vocabulary"


RULES: tuple[ScreeningRule, ...] = (
    ScreeningRule("empty", "the output is blank", _empty),
    ScreeningRule("truncated", "generation hit max_tokens", _truncated),
    ScreeningRule("refusal_or_meta", "refuses, or talks about the prompt", _refusal_or_meta),
    ScreeningRule("placeholder", "copies a <placeholder> of the answer format", _placeholder),
    ScreeningRule("question", "asks the reader something", _question),
    ScreeningRule("repetition", "a short phrase repeats in a loop", _repetition),
    ScreeningRule("non_english", "not English prose", _non_english),
    ScreeningRule("formatting", "markdown, list, heading or table", _formatting),
    ScreeningRule("off_topic", "no histology vocabulary at all", _off_topic),
)
"""Every screen, in the order they are tried (cheapest and most specific first)."""

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES) + ("copied_example",)
# A structured answer (the revise agent's JSON edit log) is parsed before it is screened;
# one that does not parse fails as "parse: ...", never as a verdict on its prose.
"""Names a failure reason can start with."""


def screen_output(
    text: str, finish_reason: str | None, *, example_phrases: Sequence[str] = ()
) -> str | None:
    """None when ``text`` is acceptable, else ``"<rule name>: <detail>"`` of the first failure.

    Args:
        text: a description, revised description or caption.
        finish_reason: the completion's finish reason ("length" means truncated).
        example_phrases: phrases of the prompt's few-shot example
            (``PromptTemplate.example_phrases``); containing one fails as ``copied_example``.
    """
    for rule in RULES:
        detail = rule.check(text, finish_reason)
        if detail is not None:
            return f"{rule.name}: {detail}"
    lowered = text.lower()
    for phrase in example_phrases:
        if phrase.lower() in lowered:
            return f"copied_example: contains {phrase!r}"
    return None


def _words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters only, apostrophes kept inside words)."""
    return _WORD.findall(text.lower())
