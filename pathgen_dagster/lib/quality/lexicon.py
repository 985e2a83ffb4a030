"""Pathology findings in free text, with negation, for checking captions against descriptions.

The caption-quality gates ask one question of every caption: does it assert anything its
description does not support? :class:`Lexicon` finds the findings both texts mention
(canonical terms from ``data/lexicon.yaml``, synonyms, spelling variants and plurals folded
in) and whether each is asserted or denied; :meth:`Lexicon.unsupported_claims` compares them.

Negation follows NegEx (Chapman et al., 2001) with clause- and list-aware scopes:

* pre-triggers ("no", "without", "absence of", "negative for", "free of", "lacks", "not",
  "neither", "rather than", "no evidence of" ...) negate the first finding that follows
  within three words, then every further finding joined to it by list glue (commas, "or",
  "and", "nor", "/") and hedges ("significant", "definite", "any" ...). The scope ends at
  clause punctuation (. ; : ! ? brackets, dashes), at "but", "however", "although",
  "whereas", "which" ..., at "with" or any other word once the list has ended, and before a
  listed finding that starts a clause of its own ("no atypia, stroma is fibrotic");
* post-triggers ("is absent", "are not seen", "not identified", "none", "negative" ...)
  negate the list of findings that precedes them in the same clause;
* pseudo-triggers ("not only", "no change", "no increase") negate nothing;
* "non-" negates only the finding it is attached to ("non-necrotic");
* degree words (``degree: true`` in the YAML: marked, abundant ...) take the negation for
  themselves: "no marked atypia" denies that atypia is marked, not that it is present.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import regex
import yaml

ClaimReason = Literal["unsupported", "negation_flipped"]

MAX_WORDS_BEFORE_FINDING = 3
"""Words (hedges not counted) a pre-trigger may stand before the first finding it negates."""

_HYPHENS = frozenset("-\u2010\u2011")
_TOKEN = regex.compile(r"[^\W_]+|[^\w\s]")

# British -> American spellings, applied to every surface form in the YAML.
_AMERICAN_SPELLINGS = (
    (regex.compile(r"aem"), "em"),  # haem-, anaemia, leukaemia
    (regex.compile(r"aec"), "ec"),  # caecum
    (regex.compile(r"aet"), "et"),  # aetiology
    (regex.compile(r"aev"), "ev"),  # naevus
    (regex.compile(r"\boed"), "ed"),  # oedema
    (regex.compile(r"\boes"), "es"),  # oesophagus, oestrogen
    (regex.compile(r"(?<=[mlv])our"), "or"),  # tumour, colour
    (regex.compile(r"is(ation|ed|ing)\b"), r"iz\1"),  # keratinisation, hyalinised
    (regex.compile(r"tre(s?)\b"), r"ter\1"),  # centre, fibres
    (regex.compile(r"ould"), "old"),  # moulding
    (regex.compile(r"artefact"), "artifact"),
    (regex.compile(r"leucocyt"), "leukocyt"),
)


def _wordset(words: str) -> frozenset[str]:
    """Returns the set of whitespace-separated words in ``words``."""
    return frozenset(words.split())


def _words(phrases: str) -> frozenset[tuple[str, ...]]:
    """Returns a set of token tuples from a "|"-separated list of phrases."""
    return frozenset(tuple(_TOKEN.findall(p.strip())) for p in phrases.split("|") if p.strip())


_PRE_TRIGGERS = _words(
    "no|not|without|absent|absence of|negative for|free of|free from|lacks|lack of|lack|"
    "lacking|devoid of|none|neither|nor|rather than|instead of|no evidence of|no sign of|"
    "no signs of|no features of|no definite|never|nothing|cannot|excluding|fails to show|"
    "fail to show"
)
_POST_TRIGGERS = _words(
    "absent|none|negative|lacking|not seen|not identified|not present|not observed|"
    "not evident|not apparent|not visible|not detected|not noted|not found|not appreciated|"
    "not demonstrated|not recognised|not recognized|not appreciable|not seen here|"
    "cannot be identified|cannot be seen|could not be identified|not conspicuous|"
    "none seen|none identified|ruled out|excluded"
)
_PSEUDO_TRIGGERS = _words(
    "not only|not just|no change|no increase|no decrease|no significant change|"
    "not necessarily|without difficulty|no further|not certain whether|not certain if"
)
_NON_PREFIX = ("non",)
_TERMINATORS = _words(
    "but|however|although|though|whereas|while|whilst|yet|except|apart|aside|which|who|"
    "whose|where|because|since|unlike|otherwise|instead"
)
_LIST_GLUE = _words(", |or|and|nor|&|/|plus|as well as|and/or|either")
_HEDGES = _words(
    "any|significant|significantly|definite|definitive|obvious|obviously|overt|evident|"
    "appreciable|discernible|identifiable|convincing|clear|clearly|frank|true|further|"
    "additional|other|associated|apparent|substantial|notable|readily|areas of|foci of|"
    "evidence of|features of|sign of|signs of|foci|areas"
)
_ARTICLES = frozenset({"a", "an", "the"})
_HARD_STOPS = frozenset('.;:!?()[]{}\u2013\u2014\u2026"')
# Before the first finding these mean the negation belongs to another noun ("no clear
# boundary between tumour and stroma").
_STOP_PREPOSITIONS = _wordset(
    "between within in into inside around near beside along from among across at on under "
    "over through throughout beyond behind above below adjacent"
)
_COPULAS = _wordset(
    "is are was were appears appear seems seem shows show contains contain demonstrates "
    "demonstrate has have displays display"
)
_EXISTENCE = _wordset(
    "seen identified present noted evident observed visible apparent found detected not "
    "absent appreciated"
)
_SINGULAR_COPULAS = _wordset("is was appears seems")
_POST_FILLERS = _wordset(
    "is are was were be been being appears appear seems seem entirely completely largely "
    "also clearly definitely generally totally wholly conspicuously notably again :"
)


@dataclass(frozen=True)
class Mention:
    """One finding found in a text.

    Attributes:
        term: Canonical term.
        category: The term's category in the lexicon.
        negated: Whether the text denies the finding ("no necrosis").
        start: Character offset of the surface form in the text.
        end: Character offset just past the surface form.
        text: The surface form as written.
    """

    term: str
    category: str
    negated: bool
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Claim:
    """A caption finding that its description does not support.

    Attributes:
        term: Canonical term.
        category: The term's category in the lexicon.
        reason: ``"unsupported"``: the description never mentions the finding (nor anything
            that implies it); ``"negation_flipped"``: the description says the opposite.
        text: The caption's surface form, with "no " in front when the caption denies it.
    """

    term: str
    category: str
    reason: ClaimReason
    text: str


@dataclass(frozen=True)
class _Term:
    name: str
    category: str
    implies: tuple[str, ...]
    degree: bool


@dataclass(slots=True)
class _Unit:
    """A token of the text, or a run of tokens that forms one finding."""

    key: str  # lower-cased, accent-free token ("" for findings)
    start: int
    end: int
    term: int = -1  # index into Lexicon._terms when this unit is a finding
    negated: bool = False


class Lexicon:
    """Pathology terms with synonyms, variants and implications; finds them in text.

    Build one with :meth:`load`. Instances are immutable and safe to share.
    """

    def __init__(self, source: bytes) -> None:
        document = yaml.safe_load(source)
        if not isinstance(document, Mapping) or not isinstance(document.get("categories"), Mapping):
            raise ValueError("lexicon YAML must have a 'categories' mapping of term lists")
        self._version = hashlib.sha256(source).hexdigest()[:12]
        self._terms: list[_Term] = []
        explicit: dict[tuple[str, ...], int] = {}
        generated: dict[tuple[str, ...], int | None] = {}
        for category, entries in document["categories"].items():
            for entry in entries if isinstance(entries, list) else [entries]:
                _check_entry(category, entry)
                index = len(self._terms)
                name = str(entry["term"]).strip().lower()
                self._terms.append(
                    _Term(
                        name=name,
                        category=str(category),
                        implies=tuple(str(t).lower() for t in entry.get("implies") or ()),
                        degree=bool(entry.get("degree", False)),
                    )
                )
                for surface in [name, *(str(s).lower() for s in entry.get("synonyms") or ())]:
                    key = _form_key(surface)
                    owner = explicit.setdefault(key, index)
                    if owner != index:
                        raise ValueError(
                            f"lexicon form {surface!r} belongs to both "
                            f"{self._terms[owner].name!r} and {name!r}"
                        )
                    for variant in _variants(surface):
                        other = generated.setdefault(variant, index)
                        if other is not None and other != index:
                            generated[variant] = None  # ambiguous: drop it
        self._index = {t.name: i for i, t in enumerate(self._terms)}
        if len(self._index) != len(self._terms):
            raise ValueError("lexicon has a canonical term listed twice")
        for term in self._terms:
            missing = [t for t in term.implies if t not in self._index]
            if missing:
                raise ValueError(f"lexicon term {term.name!r} implies unknown terms {missing}")
        forms = {k: v for k, v in generated.items() if v is not None}
        forms.update(explicit)
        self._forms: dict[tuple[str, ...], int] = forms
        lengths: dict[str, set[int]] = {}
        for key in forms:
            lengths.setdefault(key[0], set()).add(len(key))
        self._lengths = {first: sorted(ns, reverse=True) for first, ns in lengths.items()}
        self._implied_by: dict[int, frozenset[int]] = {}  # term -> everything it implies
        for i in range(len(self._terms)):
            self._implied_by[i] = self._closure(i)
        self._implying: dict[int, set[int]] = {i: set() for i in range(len(self._terms))}
        for specific, generals in self._implied_by.items():
            for general in generals:
                self._implying[general].add(specific)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """Returns the lexicon read from ``path``, by default the packaged ``lexicon.yaml``.

        Raises:
            ValueError: The YAML is malformed, a surface form belongs to two terms, or an
                ``implies`` names an unknown term.
        """
        if path is None:
            source = resources.files("pathgen_dagster.lib.quality").joinpath("data/lexicon.yaml")
            return cls(source.read_bytes())
        return cls(Path(path).read_bytes())

    @property
    def version(self) -> str:
        """The first 12 hex digits of the YAML's sha256, for provenance columns."""
        return self._version

    @property
    def terms(self) -> dict[str, str]:
        """Canonical term -> category, in YAML order."""
        return {t.name: t.category for t in self._terms}

    def implied_terms(self, term: str) -> frozenset[str]:
        """Returns the canonical terms that ``term`` implies, transitively, itself excluded."""
        return frozenset(self._terms[i].name for i in self._implied_by[self._index[term]])

    def mentions(self, text: str) -> list[Mention]:
        """Returns the findings in ``text``, in order, each with its negation.

        Matching is case- and accent-insensitive and whole-word; the longest form wins
        ("prominent nucleoli" over "nucleoli"); hyphens count as spaces.
        """
        return list(_mentions_of(self, text))

    def _find_mentions(self, text: str) -> tuple[Mention, ...]:
        units = self._units(text)
        self._negate(units)
        found = []
        for unit in units:
            if unit.term >= 0:
                term = self._terms[unit.term]
                found.append(
                    Mention(
                        term=term.name,
                        category=term.category,
                        negated=unit.negated,
                        start=unit.start,
                        end=unit.end,
                        text=text[unit.start : unit.end],
                    )
                )
        return tuple(found)

    def unsupported_claims(self, caption: str, description: str) -> list[Claim]:
        """Returns the caption's findings that the description does not support, in order.

        A finding the caption asserts is supported when the description asserts it or a
        finding that implies it ("comedonecrosis" supports "necrosis"). A finding the
        caption denies is supported when the description denies it or a finding it implies
        ("no necrosis" supports "no comedonecrosis"). Otherwise the claim is
        ``"negation_flipped"`` when the description states the opposite, else
        ``"unsupported"``. Denials count like assertions: "no necrosis" in a caption whose
        description never looked at necrosis is a finding the caption made up. The one
        exception is a denied degree word ("no marked atypia"): it claims less, not more,
        so it is only reported when it contradicts the description. Each (term, negation)
        pair is reported once.
        """
        asserted: set[int] = set()
        denied: set[int] = set()
        for mention in self.mentions(description):
            index = self._index[mention.term]
            if mention.negated:
                denied.add(index)
                denied.update(self._implying[index])
            else:
                asserted.add(index)
                asserted.update(self._implied_by[index])
        claims: list[Claim] = []
        reported: set[tuple[str, bool]] = set()
        for mention in self.mentions(caption):
            if (mention.term, mention.negated) in reported:
                continue
            index = self._index[mention.term]
            supported, opposite = (denied, asserted) if mention.negated else (asserted, denied)
            if index in supported:
                continue
            if index in opposite:
                reason: ClaimReason = "negation_flipped"
            elif mention.negated and self._terms[index].degree:
                continue
            else:
                reason = "unsupported"
            reported.add((mention.term, mention.negated))
            surface = f"no {mention.text}" if mention.negated else mention.text
            claims.append(Claim(mention.term, mention.category, reason, surface))
        return claims

    # --- internals ------------------------------------------------------------------

    def _closure(self, index: int) -> frozenset[int]:
        seen: set[int] = set()
        stack = [self._index[t] for t in self._terms[index].implies]
        while stack:
            current = stack.pop()
            if current in seen or current == index:
                continue
            seen.add(current)
            stack.extend(self._index[t] for t in self._terms[current].implies)
        return frozenset(seen)

    def _units(self, text: str) -> list[_Unit]:
        tokens = [
            _Unit(_fold(m.group()), m.start(), m.end())
            for m in _TOKEN.finditer(text)
            if m.group() not in _HYPHENS
        ]
        keys = [t.key for t in tokens]
        units: list[_Unit] = []
        i = 0
        while i < len(tokens):
            for n in self._lengths.get(keys[i], ()):
                if i + n > len(keys):
                    continue
                term = self._forms.get(tuple(keys[i : i + n]))
                if term is not None:
                    units.append(_Unit("", tokens[i].start, tokens[i + n - 1].end, term))
                    i += n
                    break
            else:
                units.append(tokens[i])
                i += 1
        return units

    def _negate(self, units: list[_Unit]) -> None:
        i = 0
        while i < len(units):
            if units[i].term >= 0:
                i += 1
                continue
            if units[i].key == "non" and i + 1 < len(units) and units[i + 1].term >= 0:
                units[i + 1].negated = True
                i += 2
                continue
            phrase, kinds = self._trigger_at(units, i)
            if not kinds or "pseudo" in kinds:
                i += max(len(phrase), 1)
                continue
            end = i + len(phrase)
            negated_before = "post" in kinds and self._negate_before(units, i)
            if "pre" in kinds and not negated_before:
                self._negate_after(units, end)
            i = end

    @staticmethod
    def _trigger_at(units: list[_Unit], i: int) -> tuple[tuple[str, ...], frozenset[str]]:
        phrase = _longest_phrase(units, i, _TRIGGER_INDEX)
        return phrase, _TRIGGER_KINDS.get(phrase, frozenset())

    def _negate_after(self, units: list[_Unit], j: int) -> None:
        words_before = 0
        in_list: list[int] = []
        while j < len(units):
            unit = units[j]
            key = (unit.key,)
            if unit.term >= 0:
                if in_list and units[j - 1].term < 0 and self._starts_clause(units, j):
                    break
                in_list.append(j)
            elif unit.key in _HARD_STOPS or key in _TERMINATORS:
                break
            elif self._trigger_at(units, j)[1] and unit.key != "nor":
                break  # the next trigger negates its own scope
            elif unit.key == ",":
                if not in_list:
                    break
            elif glue := _longest_phrase(units, j, _GLUE_INDEX):
                j += len(glue)
                continue
            elif in_list:
                break  # any other word once the list has started ends it ("with", "in" ...)
            elif unit.key in _ARTICLES:
                pass
            elif unit.key in _STOP_PREPOSITIONS:
                break
            else:
                words_before += 1
                if words_before > MAX_WORDS_BEFORE_FINDING:
                    break
            j += 1
        self._apply(units, in_list)

    def _negate_before(self, units: list[_Unit], i: int) -> bool:
        k = i - 1
        singular = False
        while k >= 0 and units[k].term < 0 and units[k].key in _POST_FILLERS:
            singular = singular or units[k].key in _SINGULAR_COPULAS
            k -= 1
        in_list: list[int] = []
        while k >= 0:
            unit = units[k]
            key = (unit.key,)
            if unit.term >= 0:
                in_list.append(k)
            elif key in _GLUE_INDEX.get(unit.key, ()):
                if not in_list:
                    break
            elif unit.key not in _ARTICLES:
                break
            k -= 1
        # A list is the subject only when it opens its clause ("Necrosis and haemorrhage are
        # absent"); otherwise, or with a singular verb, only the nearest finding is
        # ("... shows prominent nucleoli, and necrosis is absent").
        opens_clause = k < 0 or units[k].key in _HARD_STOPS or (units[k].key,) in _TERMINATORS
        if in_list and (singular or not opens_clause):
            nearest = [in_list[0]]
            while nearest[-1] - 1 in in_list:
                nearest.append(nearest[-1] - 1)
            in_list = nearest
        in_list.reverse()
        self._apply(units, in_list)
        return bool(in_list)

    def _apply(self, units: list[_Unit], in_list: list[int]) -> None:
        """Negates a list of findings; a degree word keeps the negation from the finding it
        modifies."""
        for n, j in enumerate(in_list):
            previous = in_list[n - 1] if n else -1
            if previous == j - 1 and self._terms[units[previous].term].degree:
                continue
            units[j].negated = True

    def _starts_clause(self, units: list[_Unit], j: int) -> bool:
        """Whether the finding at ``j`` is the subject of a new clause ("... and stroma is
        fibrotic"), judged by a copula that does not merely state presence."""
        k = j + 1
        while k < len(units) and units[k].term >= 0:
            k += 1
        if k >= len(units) or units[k].key not in _COPULAS:
            return False
        following = units[k + 1].key if k + 1 < len(units) else ""
        return following not in _EXISTENCE


def _check_entry(category: str, entry: object) -> None:
    """Raises ValueError unless ``entry`` is a well-formed term of the lexicon YAML."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("term"), str):
        raise ValueError(f"lexicon category {category!r}: entry {entry!r} lacks a 'term' string")
    for field in ("synonyms", "implies"):
        value = entry.get(field)
        if value is not None and not isinstance(value, list):
            raise ValueError(f"lexicon term {entry['term']!r}: {field!r} must be a list")
    unknown = set(entry) - {"term", "synonyms", "implies", "degree"}
    if unknown:
        raise ValueError(f"lexicon term {entry['term']!r}: unknown fields {sorted(unknown)}")


def _index_phrases(*groups: frozenset[tuple[str, ...]]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Returns phrases by first token, longest first."""
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in set().union(*groups):
        index.setdefault(phrase[0], []).append(phrase)
    return {first: tuple(sorted(ps, key=len, reverse=True)) for first, ps in index.items()}


def _longest_phrase(
    units: list[_Unit], j: int, index: dict[str, tuple[tuple[str, ...], ...]]
) -> tuple[str, ...]:
    """Returns the longest indexed phrase that starts at unit ``j``, or ``()``.

    Findings have an empty key, so a phrase never runs through one.
    """
    for phrase in index.get(units[j].key, ()):
        n = len(phrase)
        if j + n <= len(units) and all(units[j + k].key == phrase[k] for k in range(1, n)):
            return phrase
    return ()


_TRIGGER_KINDS: dict[tuple[str, ...], frozenset[str]] = {}
for _kind, _phrases in (
    ("pre", _PRE_TRIGGERS),
    ("post", _POST_TRIGGERS),
    ("pseudo", _PSEUDO_TRIGGERS),
):
    for _phrase in _phrases:
        _TRIGGER_KINDS[_phrase] = _TRIGGER_KINDS.get(_phrase, frozenset()) | {_kind}
_TRIGGER_INDEX = _index_phrases(_PRE_TRIGGERS, _POST_TRIGGERS, _PSEUDO_TRIGGERS)
_GLUE_INDEX = _index_phrases(_LIST_GLUE, _HEDGES)


def _fold(token: str) -> str:
    """Returns a token lower-cased and stripped of accents ("Hürthle" -> "hurthle")."""
    token = token.lower()
    if token.isascii():
        return token
    decomposed = unicodedata.normalize("NFKD", token)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _form_key(surface: str) -> tuple[str, ...]:
    return tuple(_fold(t) for t in _TOKEN.findall(surface) if t not in _HYPHENS)


def _variants(surface: str) -> Iterable[tuple[str, ...]]:
    """Yields the generated forms of a surface form: American spelling and plurals."""
    spellings = {surface}
    american = surface
    for pattern, replacement in _AMERICAN_SPELLINGS:
        american = pattern.sub(replacement, american)
    spellings.add(american)
    for spelling in spellings:
        key = _form_key(spelling)
        if not key:
            continue
        yield key
        for plural in _plurals(key[-1]):
            yield (*key[:-1], plural)


def _plurals(word: str) -> list[str]:
    """Returns regular plurals of a word (adjectives get harmless non-words)."""
    if not word.isalpha() or len(word) < 3:
        return []
    if word.endswith("us"):
        return [word[:-2] + "i", word + "es"]
    if word.endswith("is"):
        return [word[:-2] + "es"]
    if word.endswith("ss") or word.endswith(("x", "z", "ch", "sh")):
        plurals = [word + "es"]
        if word.endswith(("ex", "ix")):
            plurals.append(word[:-2] + "ices")
        return plurals
    if word.endswith("s"):
        return []
    if word.endswith("y") and word[-2] not in "aeiou":
        return [word[:-1] + "ies"]
    if word.endswith("um"):
        return [word[:-2] + "a", word + "s"]
    if word.endswith("a"):
        return [word + "e", word + "s"]
    return [word + "s"]


# Quality rules compare many captions with one description: each text is read once. Kept
# outside the instance so that a Lexicon still pickles (multiprocessing, Ray).
@functools.lru_cache(maxsize=8192)
def _mentions_of(lexicon: Lexicon, text: str) -> tuple[Mention, ...]:
    return lexicon._find_mentions(text)


@functools.cache
def get_lexicon() -> Lexicon:
    """Returns the process-wide lexicon loaded from the packaged YAML."""
    return Lexicon.load()
