"""The image/text encoder resource: weight-free morphology by default, CLIP in production."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

import dagster as dg
import numpy as np

from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.lib.selection.text_encoder import SentenceEncoder, encode_unique

# torch (1.4 CPU s and 220 MB to import) loads with the first encoder, not with the
# definitions: the caption, quality and SQL commands never need it.
if TYPE_CHECKING:
    from pathgen_dagster.lib.selection.clip_encoder import OpenClipEncoder
    from pathgen_dagster.lib.selection.morphology import MorphologyEncoder


class Encoders(dg.ConfigurableResource):
    """Which encoders embed tiles (for clustering) and rank them against text prompts.

    ``morphology`` (default, no weights): tiles are embedded by their measured H&E
    morphology; for retrieval, each tile's measurements are written as a factual sentence
    and both that sentence and the prompts are embedded with the packaged MiniLM sentence
    model. This is a weaker, weight-free stand-in for CLIP: it ranks by what was measured,
    not by what a vision model sees. ``open_clip``: a local CLIP checkpoint (PathGen-CLIP-L,
    CONCH, PLIP...) embeds tiles and prompts, as PathGen did.

    Attributes:
        kind: ``morphology`` or ``open_clip``.
        checkpoint: local path of the open_clip checkpoint (``open_clip`` only).
        model_name: open_clip architecture (``open_clip`` only).
        device: ``auto`` uses a GPU when one is present.
        batch_size: tiles per batch.
        torch_threads: CPU threads torch may use; 1 by default because on a shared CPU
            two threads waiting on each other ran the batched descriptor 2.5x slower
            (scripts/bench_morphology.py); raise it on a dedicated machine.
    """

    kind: Literal["morphology", "open_clip"] = "morphology"
    checkpoint: str | None = None
    model_name: str = "ViT-L-14"
    device: str = "auto"
    batch_size: int = 16
    torch_threads: int = 1

    @cached_property
    def morphology(self) -> MorphologyEncoder:
        import torch

        from pathgen_dagster.lib.selection.clip_encoder import resolve_device
        from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

        torch.set_num_threads(self.torch_threads)
        return MorphologyEncoder(device=resolve_device(self.device), batch_size=self.batch_size)

    @cached_property
    def clip(self) -> OpenClipEncoder:
        if not self.checkpoint:
            raise ValueError("encoder kind 'open_clip' needs `checkpoint`, a local checkpoint path")
        from pathgen_dagster.lib.selection.clip_encoder import OpenClipEncoder

        return OpenClipEncoder(
            self.checkpoint,
            model_name=self.model_name,
            device=self.device,
            batch_size=self.batch_size,
        )

    @cached_property
    def sentences(self) -> SentenceEncoder:
        from pathgen_dagster.lib.selection.clip_encoder import resolve_device

        return SentenceEncoder(device=resolve_device(self.device))

    @property
    def image_encoder_id(self) -> str:
        return self.morphology.encoder_id if self.kind == "morphology" else self.clip.encoder_id

    @property
    def text_encoder_id(self) -> str:
        return self.sentences.encoder_id if self.kind == "morphology" else self.clip.encoder_id

    @property
    def dedup_threshold(self) -> float:
        """The near-duplicate cosine the image encoder declares for its own embedding."""
        return (
            self.morphology.dedup_threshold
            if self.kind == "morphology"
            else self.clip.dedup_threshold
        )

    def embed_tiles(
        self, tiles: np.ndarray, mpp: float | None, *, mpp_source: str = "slide"
    ) -> tuple[np.ndarray, list[MorphologyFacts]]:
        """Image embeddings of the tiles and their measured morphology (always measured).

        ``mpp`` None means unknown: the facts then carry no physical measure.
        """
        embeddings, facts = self.morphology.embed(tiles, mpp, mpp_source=mpp_source)
        if self.kind == "open_clip":
            embeddings = self.clip.embed_images(tiles)
        return embeddings.astype(np.float32), facts

    def retrieval_embeddings(
        self, embeddings: np.ndarray, facts_sentences: list[str]
    ) -> np.ndarray:
        """The tiles' side of prompt retrieval: CLIP image embeddings, or the MiniLM
        embeddings of their measured-morphology sentences in the default mode.

        Each distinct sentence is encoded once (the benchmark slide: 2,518 tiles hold 114
        distinct sentences; 0.35x the CPU of encoding them all). A sentence's embedding
        moves in its last bits with the batch it is padded in, so this changes scores by up
        to 3e-5; selection ranks on a 0.001 grid (``selection.SCORE_DECIMALS``), so it
        keeps the same tiles either way."""
        if self.kind != "morphology":
            return embeddings
        return encode_unique(facts_sentences, self.sentences.encode)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text embeddings in the space tiles are ranked in."""
        return (
            self.sentences.encode(texts) if self.kind == "morphology" else self.clip.encode(texts)
        )
