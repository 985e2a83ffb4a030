"""Tests for the CLIP BPE tokenizer: exact ids, the 77-token window, word-safe truncation."""

from __future__ import annotations

import gzip
import importlib.util
import random
import sys

import pytest

from pathgen_dagster.lib.captions import tokenizer as tokenizer_module
from pathgen_dagster.lib.captions.tokenizer import (
    CLIP_CONTEXT_LENGTH,
    ClipTokenizer,
    clean_text,
    find_vocab_path,
    get_tokenizer,
)

# Ids produced by open_clip 3.3.0's SimpleTokenizer (with ftfy) for the same strings.
KNOWN_ENCODINGS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "Haematoxylin and eosin": [30723, 905, 12432, 2424, 537, 68, 2211, 530],
    "Pleomorphic, hyperchromatic nuclei.": [926, 29431, 3977, 267, 7997, 44207, 25693, 328, 269],
    "\u201cCaf\u00e9\u201d &amp;amp; \ufb01brosis": [257, 15304, 257, 261, 36307],
    "\uff21\uff22\uff23  x\u00a0y": [5334, 343, 344],
    "It's 3.5\u00b5m": [585, 568, 274, 269, 276, 126, 113, 332],
}

_PATHOLOGY_TEXT = (
    "tumour tumor cells nuclei pleomorphic hyperchromatic nucleoli prominent glands cribriform "
    "eosinophilic basophilic cytoplasm haematoxylin hematoxylin stroma desmoplastic "
    "lymphocytes plasma necrosis haemorrhage mitoses atypical N:C ratio 3-4 \u00b5m 0.5mm "
    "well-differentiated adenocarcinoma keratin pearls intercellular bridges alveolar lepidic "
    "micropapillary psammoma bodies colloid follicular H\u00fcrthle na\u00efve don't it's "
    "we're H&E (approximately) 20x, 40\u00d7; ~50% e.g. CD20+ Ki-67 Gleason 3+4=7"
)
PATHOLOGY_WORDS = _PATHOLOGY_TEXT.split()


@pytest.fixture(scope="module")
def clip() -> ClipTokenizer:
    return get_tokenizer()


def random_sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(PATHOLOGY_WORDS) for _ in range(rng.randint(1, 70)))
        + rng.choice([".", "", " .", "!"])
        for _ in range(count)
    ]


def test_vocabulary_matches_clip(clip: ClipTokenizer) -> None:
    assert clip.vocab_size == 49408
    assert (clip.start_id, clip.end_id) == (49406, 49407)
    assert CLIP_CONTEXT_LENGTH == 77
    assert get_tokenizer() is clip


@pytest.mark.parametrize(("text", "ids"), KNOWN_ENCODINGS.items())
def test_known_encodings(clip: ClipTokenizer, text: str, ids: list[int]) -> None:
    assert clip.encode(text) == ids
    assert clip.count(text) == len(ids) + 2


def test_photo_of_a_cat_with_start_and_end(clip: ClipTokenizer) -> None:
    ids = [clip.start_id, *clip.encode("a photo of a cat"), clip.end_id]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_window_holds_exactly_77_tokens(clip: ClipTokenizer) -> None:
    exactly_77 = " ".join(["cat"] * 75)  # "cat" is one token; + start + end
    assert clip.count(exactly_77) == 77
    assert clip.fits(exactly_77)
    assert not clip.fits(exactly_77 + " cat")
    assert clip.count(exactly_77 + " cat") == 78
    assert clip.fits("cat cat", limit=4) and not clip.fits("cat cat cat", limit=4)


def test_empty_text_costs_start_and_end(clip: ClipTokenizer) -> None:
    assert clip.encode("") == []
    assert clip.encode(" \n\t ") == []
    assert clip.count("") == 2


def test_cleaning_fixes_unicode_and_whitespace(clip: ClipTokenizer) -> None:
    assert clean_text("  nuclei\n\n are\t\u00a0 large ") == "nuclei are large"
    assert clean_text("\u201ccurly\u201d \u2018quotes\u2019") == "\"curly\" 'quotes'"
    assert clean_text("\ufb01brosis &amp;amp; \uff28\uff06\uff25") == "fibrosis & H&E"
    assert clean_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert clip.encode("Nuclei   ARE\nlarge") == clip.encode("nuclei are large")
    assert clip.encode("\ufb01brosis") == clip.encode("fibrosis")


def test_decode_round_trips_lowercased_text(clip: ClipTokenizer) -> None:
    text = "Pleomorphic nuclei with prominent nucleoli"
    ids = [clip.start_id, *clip.encode(text), clip.end_id]
    assert clip.decode(ids) == text.lower()
    assert clip.decode(clip.encode("na\u00efve \u00b5m")) == "na\u00efve \u00b5m"


def test_truncate_returns_fitting_text_unchanged(clip: ClipTokenizer) -> None:
    assert clip.truncate_words("  Short   caption. ") == "Short caption."


def test_truncate_keeps_whole_sentences(clip: ClipTokenizer) -> None:
    text = (
        "Well-differentiated adenocarcinoma with cribriform glands. Nuclei are enlarged and "
        "hyperchromatic with prominent nucleoli and frequent mitoses, and the surrounding "
        "desmoplastic stroma contains scattered lymphocytes and plasma cells."
    )
    first = "Well-differentiated adenocarcinoma with cribriform glands."
    assert clip.truncate_words(text, limit=30) == first
    assert clip.fits(first, limit=30)


def test_truncate_by_word_closes_the_sentence(clip: ClipTokenizer) -> None:
    text = "Sheets of pleomorphic tumour cells with abundant eosinophilic cytoplasm and necrosis"
    cut = clip.truncate_words(text, limit=10, prefer="word")
    assert clip.fits(cut, limit=10)
    assert cut == "Sheets of pleomorphic tumour cells."  # "with" does not dangle
    # with no whole sentence that fits, sentence mode falls back to words
    assert clip.truncate_words(text, limit=10) == cut
    assert clip.truncate_words(text, limit=12, prefer="word") == (
        "Sheets of pleomorphic tumour cells with abundant."
    )


@pytest.mark.parametrize("limit", [5, 9, 17, 30, 52, 77])
def test_truncate_never_cuts_a_word(clip: ClipTokenizer, limit: int) -> None:
    for text in random_sentences(40, seed=limit):
        words = set(clean_text(text).split())
        for prefer in ("sentence", "word"):
            cut = clip.truncate_words(text, limit, prefer=prefer)
            assert clip.fits(cut, limit)
            for word in cut.split():
                # a cut word may only lose trailing punctuation or gain a closing full stop
                assert word in words or word.rstrip(".") in {w.rstrip(".,;:!") for w in words}


def test_truncate_is_longest_fitting_word_prefix(clip: ClipTokenizer) -> None:
    text = " ".join(["glands"] * 100)
    cut = clip.truncate_words(text, prefer="word")
    assert clip.fits(cut)
    assert not clip.fits(cut[:-1] + " glands.")


def test_truncate_rejects_limit_below_two(clip: ClipTokenizer) -> None:
    with pytest.raises(ValueError, match="start and end"):
        clip.truncate_words("cat", limit=1)
    assert clip.truncate_words("cat cat", limit=2) == ""


def test_missing_vocabulary_names_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="open-clip-torch==3.3.0"):
        ClipTokenizer(tmp_path / "missing.txt.gz")


def test_missing_open_clip_names_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps open-clip-torch"):
        find_vocab_path()


def test_matches_huggingface_clip_tokenizer(clip: ClipTokenizer) -> None:
    """An independent BPE (HF tokenizers, via transformers) built from the same merges."""
    transformers = pytest.importorskip("transformers")
    lines = gzip.decompress(find_vocab_path().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(tokenizer_module._bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    reference = transformers.CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=merges
    )
    # HF's tokenizer skips ftfy and HTML unescaping, so compare on text both treat alike.
    for text in random_sentences(300, seed=11):
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert clip.encode(text) == expected, text
    assert reference("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_matches_open_clip_simple_tokenizer(clip: ClipTokenizer) -> None:
    """open_clip's own tokenizer.py, loaded by file path (the package needs torchvision)."""
    pytest.importorskip("ftfy", reason="open_clip's tokenizer.py imports ftfy")
    pytest.importorskip("torch")
    path = find_vocab_path().parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop("_open_clip_tokenizer", None)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer(str(find_vocab_path()))
    for text in [*random_sentences(300, seed=5), *KNOWN_ENCODINGS]:
        assert clip.encode(text) == reference.encode(text), text


def test_fallback_cleaning_matches_ftfy() -> None:
    ftfy = pytest.importorskip("ftfy")
    samples = [*random_sentences(100, seed=3), *KNOWN_ENCODINGS]
    samples += ["\x1b[31mred\x1b[0m", "a\r\nb\u2028c", "\ufeffbom", "\u201cq\u201d \u2018s\u2019"]
    for text in samples:
        assert tokenizer_module._fix_text_until_stable(text) == ftfy.fix_text(text), repr(text)
