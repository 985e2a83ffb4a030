"""CLIP's byte-level BPE tokenizer, as OpenAI CLIP and open_clip apply it, without torch.

PathGen's summary captions are read by a CLIP text encoder whose window holds 77 tokens,
start and end tokens included; anything past that is silently cut. This module counts and
trims captions with the very tokenizer CLIP uses, so the limit is enforced exactly.

The vocabulary (``bpe_simple_vocab_16e6.txt.gz``, 48,894 merges, 49,408 ids) ships inside the
``open_clip`` package. ``import open_clip`` fails here (it imports torchvision), so the file
is located from the package's import spec without importing it, and the BPE is
re-implemented: the same cleaning (ftfy, double HTML unescape, whitespace collapse,
lower-casing), the same pre-tokenising regex and the same merge loop as open_clip's
``SimpleTokenizer``.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import html
import importlib.util
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import regex

CLIP_CONTEXT_LENGTH = 77
"""Tokens CLIP's text encoder reads, start and end tokens included."""

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_FIX = "pip install --no-deps open-clip-torch==3.3.0"

# open_clip's pre-tokeniser; the special tokens come first so they survive as one piece.
_PRETOKEN_PATTERN = (
    r"<start_of_text>|<end_of_text>"
    r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# Merges used by CLIP: the file's first line is a header, then 49152 - 256 - 2 merges.
_MERGE_COUNT = 49152 - 256 - 2
_BPE_CACHE_SIZE = 65_536
_SENTENCE_END = regex.compile(r"[.!?](?=\s|$)")
# Function words that leave a cut caption dangling ("... nuclei with.") are dropped.
_DANGLING = (
    "a an and as at by for from in into of on or the to with without while whereas but "
    "which that than is are was were be been"
)
_DANGLING_WORDS = frozenset(_DANGLING.split())


def find_vocab_path() -> Path:
    """Returns the path of CLIP's BPE vocabulary inside the installed ``open_clip`` package.

    The package is located through its import spec only: importing it would import
    torchvision, which does not load beside this project's torch.

    Raises:
        FileNotFoundError: ``open_clip`` is not installed or lacks the vocabulary file;
            the message names the install command.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) if locations else "no open_clip package found"
    raise FileNotFoundError(
        f"CLIP BPE vocabulary {VOCAB_FILENAME} not found ({where}). "
        f"Install it with `{OPEN_CLIP_FIX}` (without --no-deps pip would pull torchvision, "
        "which breaks torch here), or pass vocab_path= to ClipTokenizer."
    )


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """Returns CLIP's reversible map from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + shift)
            shift += 1
    return dict(zip(byte_values, map(chr, code_points), strict=True))


# --- text cleaning ---------------------------------------------------------------------
# open_clip runs ftfy.fix_text. ftfy is used when importable; otherwise the fallback below
# reproduces every ftfy default fix except mojibake repair (text decoded with the wrong
# codec), which captions written by our own models do not contain.

_SINGLE_QUOTES = dict.fromkeys(map(ord, "\u02bc\u2018\u2019\u201a\u201b"), "'")
_DOUBLE_QUOTES = dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f"), '"')
_LIGATURES = "\u0132\u0133\u0149\u01c4\u01c5\u01c6\u01c7\u01c8\u01c9\u01ca\u01cb\u01cc" + "".join(
    chr(c) for c in range(0xFB00, 0xFB07)
)
_LIGATURE_MAP = {ord(c): unicodedata.normalize("NFKC", c) for c in _LIGATURES}
_WIDTH_MAP = {c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFFEF)}
_WIDTH_MAP[0x3000] = " "
_CONTROL_CHARS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF]
    + [*range(0xFFF9, 0xFFFD), *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE0080)]
)
_TERMINAL_ESCAPE = regex.compile(r"\033\[((?:\d|;)*)([a-zA-Z])")
_LINE_BREAKS = regex.compile(r"\r\n|\r|\u2028|\u2029|\u0085")


def _fix_text_fallback(text: str) -> str:
    """Returns ``text`` with ftfy's default fixes applied, mojibake repair excepted."""
    text = _TERMINAL_ESCAPE.sub("", text)
    if "<" not in text:  # ftfy's unescape_html="auto"
        text = html.unescape(text)
    text = text.translate(_LIGATURE_MAP).translate(_WIDTH_MAP)
    text = text.translate(_SINGLE_QUOTES).translate(_DOUBLE_QUOTES)
    text = _LINE_BREAKS.sub("\n", text).translate(_CONTROL_CHARS)
    return unicodedata.normalize("NFC", text)


def _fix_text_until_stable(text: str) -> str:
    # ftfy repeats its fixes until the text stops changing ("&amp;amp;" -> "&").
    for _ in range(10):
        fixed = _fix_text_fallback(text)
        if fixed == text:
            break
        text = fixed
    return text


def _load_fix_text():
    try:
        import ftfy
    except ImportError:
        return _fix_text_until_stable, False
    return ftfy.fix_text, True


_fix_text, FTFY_AVAILABLE = _load_fix_text()


def clean_text(text: str) -> str:
    """Returns ``text`` as CLIP cleans it before BPE, except lower-casing.

    ftfy's fixes, HTML unescaped twice, runs of whitespace collapsed to one space, ends
    stripped: open_clip's ``basic_clean`` followed by ``whitespace_clean``.
    """
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split())


class ClipTokenizer:
    """CLIP's BPE tokenizer: encodes, counts and trims text for a 77-token CLIP window.

    Args:
        vocab_path: The gzipped merges file; defaults to the one inside ``open_clip``.

    Raises:
        FileNotFoundError: No vocabulary file (see :func:`find_vocab_path`).
    """

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        path = Path(vocab_path) if vocab_path is not None else find_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP BPE vocabulary not found at {path}; install it with `{OPEN_CLIP_FIX}`."
            )
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars]
        vocab += ["".join(merge) for merge in merges] + list(_SPECIAL_TOKENS)
        self._encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self._decoder: dict[int, str] = {i: token for token, i in self._encoder.items()}
        self._bpe_ranks: dict[tuple[str, ...], int] = {m: i for i, m in enumerate(merges)}
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._pretoken = regex.compile(_PRETOKEN_PATTERN, regex.IGNORECASE)
        self._bpe_ids = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_ids_uncached)
        self.vocab_path = path
        self.vocab_size = len(vocab)
        self.start_id = self._encoder[_SPECIAL_TOKENS[0]]
        self.end_id = self._encoder[_SPECIAL_TOKENS[1]]

    def encode(self, text: str) -> list[int]:
        """Returns the BPE ids of ``text``, without start and end tokens."""
        ids: list[int] = []
        for piece in self._pretoken.findall(clean_text(text).lower()):
            ids.extend(self._bpe_ids(piece))
        return ids

    def count(self, text: str) -> int:
        """Returns how many tokens ``text`` fills in CLIP's window, start and end included."""
        return len(self.encode(text)) + 2

    def fits(self, text: str, limit: int = CLIP_CONTEXT_LENGTH) -> bool:
        """Returns whether ``text`` with start and end tokens fits in ``limit`` tokens."""
        return self.count(text) <= limit

    def truncate_words(
        self,
        text: str,
        limit: int = CLIP_CONTEXT_LENGTH,
        *,
        prefer: Literal["sentence", "word"] = "sentence",
    ) -> str:
        """Returns the longest start of ``text`` that fits in ``limit`` tokens, cut between words.

        Text that already fits comes back cleaned (see :func:`clean_text`) and otherwise
        unchanged. Longer text is cut only at whitespace, so no word (hyphenated ones
        included) is ever split. With ``prefer="sentence"`` the cut lands after the last
        whole sentence that fits; when not even the first sentence fits, and always with
        ``prefer="word"``, the cut lands after the last word that fits, trailing
        punctuation and dangling function words ("with", "and", "of" ...) are dropped, and
        a full stop closes the text (counted against the limit). Returns "" when not even
        one word fits. A cut inside a sentence can drop a trailing negation ("necrosis is
        not identified"), which is why whole sentences are preferred; cut captions should
        be checked again against their description.

        Args:
            text: The caption to trim.
            limit: Token budget including start and end tokens.
            prefer: Whether to keep whole sentences when at least one fits.
        """
        if limit < 2:
            raise ValueError(f"limit must hold the start and end tokens (>= 2), got {limit}")
        cleaned = clean_text(text)
        if self.fits(cleaned, limit):
            return cleaned
        if prefer == "sentence":
            ends = [m.end() for m in _SENTENCE_END.finditer(cleaned)]
            best = self._longest_fitting(ends, lambda end: cleaned[:end], limit)
            if best is not None:
                return best
        ends = [m.start() for m in regex.finditer(r"(?<=\S)(?=\s)", cleaned)]
        best = self._longest_fitting(ends, lambda end: _close_sentence(cleaned[:end]), limit)
        return best or ""

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the lower-cased, cleaned text that BPE ``ids`` spell; start and end ids are
        skipped."""
        pieces = [self._decoder[i] for i in ids if i not in (self.start_id, self.end_id)]
        raw = bytearray(self._byte_decoder[c] for c in "".join(pieces))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def _longest_fitting(self, ends: Sequence[int], prefix_at, limit: int) -> str | None:
        # A longer prefix never has fewer tokens, so binary search on the cut positions.
        lo = bisect.bisect_left(
            range(len(ends)), True, key=lambda i: not self.fits(prefix_at(ends[i]), limit)
        )
        for i in range(lo - 1, -1, -1):  # walk back past cuts that clean to nothing
            candidate = prefix_at(ends[i])
            if candidate and self.fits(candidate, limit):
                return candidate
        return None

    def _bpe_ids_uncached(self, piece: str) -> tuple[int, ...]:
        token = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
        if token in _SPECIAL_TOKENS:
            return (self._encoder[token],)
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda pair: self._bpe_ranks.get(pair, _MERGE_COUNT + 1))
            if bigram not in self._bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return tuple(self._encoder[symbol] for symbol in word)


def _close_sentence(prefix: str) -> str:
    """Returns a word-cut prefix without dangling punctuation or function words, ending in a
    full stop."""
    words = prefix.split(" ")
    while words:
        words[-1] = words[-1].rstrip(",;:-–—(/&")
        if words[-1] and words[-1].lower() not in _DANGLING_WORDS:
            break
        words.pop()
    if not words:
        return ""
    text = " ".join(words)
    return text if text[-1] in ".!?" else text + "."


@functools.cache
def get_tokenizer() -> ClipTokenizer:
    """Returns the process-wide CLIP tokenizer built from open_clip's vocabulary."""
    return ClipTokenizer()
