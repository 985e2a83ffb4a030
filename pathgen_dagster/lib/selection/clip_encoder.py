"""CLIP-style image and text towers from a local open_clip checkpoint (PathGen-CLIP, CONCH...).

This is the production encoder: PathGen ranked tiles with PathGen-CLIP-L. No weights are
downloaded: the user points ``checkpoint`` at a file on disk. open_clip imports
torchvision, which cannot be imported beside this project's CPU torch build (FACTS.md), so
the encoder lives behind the optional ``clip`` extra and fails with a clear message where
open_clip cannot be imported. Nothing falls back silently to another encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ClipUnavailableError(RuntimeError):
    """The CLIP encoder cannot run here; the message says what is missing and the fix."""


def resolve_device(device: str) -> str:
    """``cuda`` when asked for ``auto`` and a GPU is present, else what was asked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class OpenClipEncoder:
    """Image and text embeddings from an open_clip model loaded from a local checkpoint.

    Args:
        checkpoint: path of the open_clip checkpoint (.pt / .bin / .safetensors).
        model_name: open_clip architecture name, e.g. ``ViT-L-14`` for PathGen-CLIP-L.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: tiles per forward pass.

    Attributes:
        dedup_threshold: near-duplicate cosine of CLIP image features: PathGen's 0.88,
            which it used with PathGen-CLIP-L. Recalibrate with scripts/calibrate_dedup.py
            for another checkpoint.
    """

    dedup_threshold = 0.88

    def __init__(
        self,
        checkpoint: str,
        *,
        model_name: str = "ViT-L-14",
        device: str = "auto",
        batch_size: int = 32,
    ):
        path = Path(checkpoint)
        if not path.is_file():
            raise ClipUnavailableError(
                f"CLIP checkpoint {path} does not exist; set encoder.checkpoint"
            )
        try:
            import open_clip
        except Exception as error:  # ImportError, or torchvision's operator error
            raise ClipUnavailableError(
                f"open_clip cannot be imported here ({type(error).__name__}: {error}). Install the "
                "`clip` extra in an environment whose torch and torchvision match "
                "(pip install 'pathgen-lakehouse[clip]'), or use encoder kind 'morphology'."
            ) from error
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(path)
        )
        self.model = model.eval().to(self.device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.encoder_id = f"open_clip:{model_name}:{path.name}"

    @torch.inference_mode()
    def embed_images(self, tiles: np.ndarray) -> np.ndarray:
        """float32 (N, d) L2-normalised image embeddings of uint8 RGB tiles."""
        from PIL import Image

        outputs = []
        for start in range(0, len(tiles), self.batch_size):
            batch = torch.stack(
                [
                    self.preprocess(Image.fromarray(t))
                    for t in tiles[start : start + self.batch_size]
                ]
            )
            features = self.model.encode_image(batch.to(self.device))
            outputs.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (N, d) L2-normalised text embeddings."""
        features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
