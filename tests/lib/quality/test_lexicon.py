"""Tests for the pathology lexicon: matching, negation scopes and caption claims."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from importlib import resources

import pytest

from pathgen_dagster.lib.quality.lexicon import Claim, Lexicon, Mention, get_lexicon


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def found(lexicon: Lexicon, text: str) -> list[tuple[str, bool]]:
    return [(m.term, m.negated) for m in lexicon.mentions(text)]


def claims(lexicon: Lexicon, caption: str, description: str) -> list[tuple[str, str]]:
    return [(c.term, c.reason) for c in lexicon.unsupported_claims(caption, description)]


# --- loading ----------------------------------------------------------------------------


def test_packaged_lexicon_loads(lexicon: Lexicon) -> None:
    source = resources.files("pathgen_dagster.lib.quality").joinpath("data/lexicon.yaml").read_bytes()
    assert lexicon.version == hashlib.sha256(source).hexdigest()[:12]
    assert 150 <= len(lexicon.terms) <= 300
    assert {
        "tissue_and_cell_types",
        "architectural_patterns",
        "nuclear_features",
        "stromal_and_inflammatory",
        "necrosis_haemorrhage_and_deposits",
        "stains_and_colour",
        "cellularity_and_quantifiers",
        "sites",
    } <= set(lexicon.terms.values())
    for site in ("lung", "breast", "colon", "prostate", "kidney", "skin", "liver", "brain"):
        assert lexicon.terms[site] == "sites"
    assert get_lexicon() is get_lexicon()
    assert get_lexicon().version == lexicon.version


def test_load_from_path_and_version_follow_the_file(tmp_path) -> None:
    path = tmp_path / "lexicon.yaml"
    path.write_text("categories:\n  findings:\n    - {term: necrosis, synonyms: [necrotic]}\n")
    small = Lexicon.load(path)
    assert small.terms == {"necrosis": "findings"}
    assert small.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    path.write_text(path.read_text() + "    - {term: fibrosis}\n")
    assert Lexicon.load(path).version != small.version


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("terms: []\n", "categories"),
        (
            "categories:\n  a:\n    - {term: necrosis}\n    - {term: dead, synonyms: [necrosis]}\n",
            "belongs to both",
        ),
        ("categories:\n  a:\n    - {term: comedo, implies: [necrosis]}\n", "unknown terms"),
        ("categories:\n  a:\n    - {synonyms: [necrotic]}\n", "lacks a 'term'"),
        ("categories:\n  a:\n    - {term: necrosis, synonyms: necrotic}\n", "must be a list"),
        ("categories:\n  a:\n    - {term: necrosis, synonym: [necrotic]}\n", "unknown fields"),
        ("categories:\n  a:\n    - {term: necrosis}\n  b:\n    - {term: necrosis}\n", "both"),
    ],
)
def test_bad_lexicon_is_rejected(tmp_path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        Lexicon.load(path)


def test_implications_are_transitive(lexicon: Lexicon) -> None:
    assert lexicon.implied_terms("ductal carcinoma in situ") >= {
        "carcinoma in situ",
        "carcinoma",
        "tumour",
        "malignant",
    }
    assert lexicon.implied_terms("lymphocytic infiltrate") == {"lymphocytes", "inflammation"}
    assert lexicon.implied_terms("necrosis") == frozenset()


# --- matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("british", "american", "term"),
    [
        ("haematoxylin", "hematoxylin", "haematoxylin"),
        ("oedema", "edema", "oedema"),
        ("tumour cells", "tumor cells", "tumour cells"),
        ("haemorrhage", "hemorrhage", "haemorrhage"),
        ("oedematous", "edematous", "oedema"),
        ("keratinisation", "keratinization", "keratinisation"),
        ("hyalinised", "hyalinized", "hyalinisation"),
        ("germinal centres", "germinal centers", "germinal centres"),
        ("nerve fibres", "nerve fibers", "nerves"),
        ("naevus", "nevus", "naevus"),
        ("crush artefact", "crush artifact", "crush artefact"),
        ("nuclear moulding", "nuclear molding", "nuclear moulding"),
        ("oesophagus", "esophagus", "oesophagus"),
        (
            "intratumoural lymphocytes",
            "intratumoral lymphocytes",
            "tumour-infiltrating lymphocytes",
        ),
    ],
)
def test_british_and_american_spellings(
    lexicon: Lexicon, british: str, american: str, term: str
) -> None:
    assert found(lexicon, british) == [(term, False)]
    assert found(lexicon, american) == [(term, False)]


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("granulomas", "granulomas"),
        ("a granuloma", "granulomas"),
        ("nucleolus", "nucleoli"),
        ("mitosis", "mitoses"),
        ("mitotic figures", "mitoses"),
        ("papilla", "papillary"),
        ("papillae", "papillary"),
        ("thrombi", "thrombus"),
        ("abscesses", "abscess"),
        ("capillaries", "capillaries"),
        ("capillary", "capillaries"),
        ("bronchi", "bronchioles"),
        ("metastases", "metastasis"),
        ("psammoma body", "psammoma bodies"),
        ("foam cells", "foamy macrophages"),
        ("histiocytes", "macrophages"),
        ("pink cytoplasm", "eosinophilic"),
    ],
)
def test_synonyms_and_plurals_fold_to_the_canonical_term(
    lexicon: Lexicon, text: str, term: str
) -> None:
    assert [t for t, _ in found(lexicon, text)] == [term]


def test_matching_ignores_case_accents_and_hyphens(lexicon: Lexicon) -> None:
    assert found(lexicon, "NECROSIS") == [("necrosis", False)]
    assert found(lexicon, "H\u00fcrthle cells") == [("oncocytic", False)]
    assert found(lexicon, "Hurthle cells") == [("oncocytic", False)]
    assert found(lexicon, "well-differentiated") == found(lexicon, "well differentiated")
    assert found(lexicon, "tumour-infiltrating lymphocytes") == [
        ("tumour-infiltrating lymphocytes", False)
    ]
    assert found(lexicon, "H&E") == [("haematoxylin and eosin", False)]
    assert found(lexicon, "high N:C ratio") == [("high nuclear-cytoplasmic ratio", False)]


def test_longest_form_wins(lexicon: Lexicon) -> None:
    assert found(lexicon, "prominent nucleoli") == [("prominent nucleoli", False)]
    assert found(lexicon, "invasive ductal carcinoma") == [("invasive ductal carcinoma", False)]
    assert found(lexicon, "clear cell renal cell carcinoma") == [
        ("clear cell renal cell carcinoma", False)
    ]
    assert found(lexicon, "haematoxylin and eosin") == [("haematoxylin and eosin", False)]
    assert found(lexicon, "haematoxylin and glands") == [
        ("haematoxylin", False),
        ("glands", False),
    ]


def test_whole_words_only(lexicon: Lexicon) -> None:
    assert found(lexicon, "scarce lymphocytes") == [("sparse", False), ("lymphocytes", False)]
    assert found(lexicon, "a scar") == [("fibrosis", False)]
    assert found(lexicon, "necrosisx pinkness unfat") == []
    assert found(lexicon, "cells with nuclei in a tissue") == []  # generic words are no findings


def test_mentions_carry_offsets_and_surface_text(lexicon: Lexicon) -> None:
    text = "Necrosis, with Hyperchromatic nuclei and haemorrhage"
    mentions = lexicon.mentions(text)
    assert mentions == [
        Mention("necrosis", "necrosis_haemorrhage_and_deposits", False, 0, 8, "Necrosis"),
        Mention("hyperchromasia", "nuclear_features", False, 15, 36, "Hyperchromatic nuclei"),
        Mention("haemorrhage", "necrosis_haemorrhage_and_deposits", False, 41, 52, "haemorrhage"),
    ]
    for mention in mentions:
        assert text[mention.start : mention.end] == mention.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        mentions[0].negated = True  # type: ignore[misc]


def test_a_text_read_again_gives_the_same_mentions_in_a_list_of_its_own(lexicon: Lexicon) -> None:
    # mentions() caches per text: what a caller does to its list must not reach the cache.
    text = "No necrosis; marked pleomorphism"
    first = lexicon.mentions(text)
    expected = list(first)
    first.clear()
    again = lexicon.mentions(text)
    assert again == expected and expected
    assert again is not lexicon.mentions(text)


def test_a_lexicon_pickles_and_reads_alike_after(lexicon: Lexicon) -> None:
    text = "No necrosis; marked pleomorphism"
    copy = pickle.loads(pickle.dumps(lexicon))
    assert copy.mentions(text) == lexicon.mentions(text)
    assert copy.version == lexicon.version


@pytest.mark.parametrize(
    "text",
    ["necrosis", "(necrosis)", "necrosis.", "...necrosis!", "'necrosis'", "\nnecrosis\t"],
)
def test_terms_at_string_edges_and_punctuation(lexicon: Lexicon, text: str) -> None:
    assert found(lexicon, text) == [("necrosis", False)]


def test_empty_text(lexicon: Lexicon) -> None:
    assert lexicon.mentions("") == []
    assert lexicon.unsupported_claims("", "") == []


# --- negation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "No necrosis.",
        "no necrosis",
        "Without necrosis",
        "There is no evidence of necrosis.",
        "Absence of necrosis",
        "absent necrosis",
        "Negative for necrosis",
        "free of necrosis",
        "The tumour lacks necrosis",
        "lack of necrosis",
        "devoid of any necrosis",
        "There is no significant necrosis",
        "Necrosis is absent.",
        "Necrosis is not seen",
        "necrosis was not identified",
        "necrosis is not present",
        "Necrosis: none.",
        "necrosis cannot be identified",
        "non-necrotic",
    ],
)
def test_negated_necrosis(lexicon: Lexicon, text: str) -> None:
    assert ("necrosis", True) in found(lexicon, text)
    assert ("necrosis", False) not in found(lexicon, text)


def test_negation_covers_lists(lexicon: Lexicon) -> None:
    assert found(lexicon, "No necrosis, haemorrhage or mitoses.") == [
        ("necrosis", True),
        ("haemorrhage", True),
        ("mitoses", True),
    ]
    assert found(lexicon, "Neither necrosis nor haemorrhage is identified.") == [
        ("necrosis", True),
        ("haemorrhage", True),
    ]
    assert found(lexicon, "Necrosis, haemorrhage and mitoses are not seen") == [
        ("necrosis", True),
        ("haemorrhage", True),
        ("mitoses", True),
    ]
    assert found(lexicon, "no necrosis or haemorrhage is seen") == [
        ("necrosis", True),
        ("haemorrhage", True),
    ]
    assert found(lexicon, "without significant atypia or mitotic activity") == [
        ("nuclear atypia", True),
        ("mitoses", True),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No necrosis. Haemorrhage is present.", [("necrosis", True), ("haemorrhage", False)]),
        ("No necrosis; haemorrhage", [("necrosis", True), ("haemorrhage", False)]),
        ("no necrosis but haemorrhage", [("necrosis", True), ("haemorrhage", False)]),
        ("no necrosis, however haemorrhage", [("necrosis", True), ("haemorrhage", False)]),
        ("no necrosis, although haemorrhage", [("necrosis", True), ("haemorrhage", False)]),
        (
            "no necrosis, with scattered lymphocytes",
            [("necrosis", True), ("scattered", False), ("lymphocytes", False)],
        ),
        ("no necrosis in the stroma", [("necrosis", True), ("stroma", False)]),
        (
            "no atypia and stroma is fibrotic",
            [("nuclear atypia", True), ("stroma", False), ("fibrosis", False)],
        ),
        (
            "no necrosis and mitoses are frequent",
            [("necrosis", True), ("mitoses", False), ("numerous", False)],
        ),
        ("no atypia and the stroma", [("nuclear atypia", True), ("stroma", False)]),
        (
            "The tumour shows prominent nucleoli, and necrosis is absent.",
            [("tumour", False), ("prominent nucleoli", False), ("necrosis", True)],
        ),
        (
            "Nuclei show prominent nucleoli and mitoses are absent",
            [("prominent nucleoli", False), ("mitoses", True)],
        ),
        ("Solid sheets rather than glands", [("solid growth", False), ("glands", True)]),
        ("not only necrosis but also haemorrhage", [("necrosis", False), ("haemorrhage", False)]),
        ("no increase in mitoses", [("mitoses", False)]),
        ("no clear boundary between tumour and stroma", [("tumour", False), ("stroma", False)]),
        (
            "Lymph node negative for metastatic carcinoma",
            [("lymph node", False), ("metastatic carcinoma", True)],
        ),
        (
            "Tumor cells lack prominent nucleoli.",
            [("tumour cells", False), ("prominent nucleoli", True)],
        ),
        ("Nuclei are not pleomorphic", [("nuclear pleomorphism", True)]),
        ("no necrosis, no haemorrhage", [("necrosis", True), ("haemorrhage", True)]),
        (
            "The epithelium is free of dysplasia but shows marked inflammation",
            [
                ("epithelium", False),
                ("dysplasia", True),
                ("marked", False),
                ("inflammation", False),
            ],
        ),
    ],
)
def test_negation_scope(lexicon: Lexicon, text: str, expected: list[tuple[str, bool]]) -> None:
    assert found(lexicon, text) == expected


def test_no_necrosis_is_not_necrosis(lexicon: Lexicon) -> None:
    assert found(lexicon, "no necrosis") == [("necrosis", True)]
    assert found(lexicon, "necrosis") == [("necrosis", False)]
    assert found(lexicon, "necrosis present") == [("necrosis", False)]


def test_degree_word_takes_the_negation(lexicon: Lexicon) -> None:
    assert found(lexicon, "no marked atypia") == [("marked", True), ("nuclear atypia", False)]
    assert found(lexicon, "Marked pleomorphism is not seen") == [
        ("marked", True),
        ("nuclear pleomorphism", False),
    ]
    assert found(lexicon, "no scattered lymphocytes") == [
        ("scattered", True),
        ("lymphocytes", True),
    ]


# --- claims -----------------------------------------------------------------------------


def test_supported_caption_has_no_claims(lexicon: Lexicon) -> None:
    description = (
        "Sections show invasive ductal carcinoma forming cribriform glands. Tumour cells have "
        "pleomorphic, hyperchromatic nuclei with prominent nucleoli. No necrosis or "
        "lymphovascular invasion is identified. The stroma is desmoplastic."
    )
    caption = "Invasive ductal carcinoma, cribriform; pleomorphic nuclei; no necrosis."
    assert lexicon.unsupported_claims(caption, description) == []


def test_synonyms_and_spellings_support_each_other(lexicon: Lexicon) -> None:
    assert claims(lexicon, "hematoxylin-stained tumor", "haematoxylin stained tumour") == []
    assert claims(lexicon, "granulomas", "a granuloma") == []
    assert claims(lexicon, "pink cytoplasm", "eosinophilic cytoplasm") == []


def test_new_finding_is_unsupported(lexicon: Lexicon) -> None:
    result = lexicon.unsupported_claims("Glands with necrosis.", "Glands.")
    assert result == [
        Claim("necrosis", "necrosis_haemorrhage_and_deposits", "unsupported", "necrosis")
    ]


def test_negation_flipped_both_ways(lexicon: Lexicon) -> None:
    assert claims(lexicon, "necrosis present", "no necrosis") == [("necrosis", "negation_flipped")]
    assert claims(lexicon, "no necrosis", "necrosis") == [("necrosis", "negation_flipped")]
    assert claims(lexicon, "Necrosis is absent.", "Extensive necrosis.") == [
        ("necrosis", "negation_flipped")
    ]
    flipped = lexicon.unsupported_claims("There is no necrosis.", "Foci of necrosis.")
    assert flipped[0].text == "no necrosis"


def test_implies_supports_the_general_term(lexicon: Lexicon) -> None:
    description = "Dense lymphocytic infiltrate around comedonecrosis."
    assert claims(lexicon, "lymphocytes and necrosis", description) == []
    assert claims(lexicon, "inflammation", description) == []
    # but not the other way round: the general term does not support the specific one
    assert claims(lexicon, "comedonecrosis", "necrosis") == [("comedonecrosis", "unsupported")]


def test_implies_through_negation(lexicon: Lexicon) -> None:
    # denying the general finding denies every specific one
    assert claims(lexicon, "no comedonecrosis", "no necrosis") == []
    assert claims(lexicon, "comedonecrosis", "no necrosis") == [
        ("comedonecrosis", "negation_flipped")
    ]
    # asserting the specific finding contradicts a denial of the general one
    assert claims(lexicon, "no necrosis", "comedonecrosis") == [("necrosis", "negation_flipped")]


def test_denying_an_unmentioned_finding_is_unsupported(lexicon: Lexicon) -> None:
    assert claims(lexicon, "Glands; no necrosis.", "Glands.") == [("necrosis", "unsupported")]
    # denying a degree claims less, not more
    assert claims(lexicon, "no marked atypia", "atypia") == []
    assert claims(lexicon, "no marked atypia", "marked atypia") == [("marked", "negation_flipped")]


def test_description_with_both_polarities_supports_either(lexicon: Lexicon) -> None:
    description = "Necrosis in the centre; no necrosis at the edge."
    assert claims(lexicon, "necrosis", description) == []
    assert claims(lexicon, "no necrosis", description) == []


def test_each_claim_is_reported_once(lexicon: Lexicon) -> None:
    result = claims(lexicon, "Necrosis, necrotic debris and necrosis.", "glands")
    assert result == [("necrosis", "unsupported")]
