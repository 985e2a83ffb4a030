"""Calibrates an image encoder's near-duplicate threshold by measurement (issue 10, item 5).

Positive pairs are one patch and a copy of itself a new scan could give: flipped, shifted a
few microns, re-encoded as JPEG. Negative pairs are patches of different tissue: skin
(the CMU slide: epidermis and dermis) and carcinoma (tiatoolbox's target image); pairs of
distinct fields of one source are reported too (same tissue, different place). A threshold
is right when re-scan copies score above it and different tissue below it. The morphology
vector cannot tell a shifted copy from another field of the same tissue (their
distributions overlap), so the recommendation is the 5th percentile of the positives,
never below the highest different-tissue pair: 95 % of copies are caught, and distinct
fields of one tissue are kept unless they measure almost alike.

    .venv/bin/python scripts/calibrate_dedup.py            # morphology encoder (default)
"""

from __future__ import annotations

import io
import sys
from collections import Counter

import numpy as np
from PIL import Image

from pathgen_dagster.lib.ingest.samples import real_sources
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

SIDE = 448  # 224 um at 0.5 um/px: a patch of PathGen's physical size scale (672 px at 40x / 1.5)
SHIFT_UM = 8.0


def crops(image: np.ndarray, stride: int, pad: int) -> list[np.ndarray]:
    out = []
    for y in range(0, image.shape[0] - SIDE - pad + 1, stride):
        for x in range(0, image.shape[1] - SIDE - pad + 1, stride):
            # ``pad`` extra pixels, so the shifted copy is real neighbouring tissue.
            tile = image[y : y + SIDE + pad, x : x + SIDE + pad]
            white = (tile.mean(axis=2) > 215).mean()
            if white < 0.8:
                out.append(np.ascontiguousarray(tile))
    return out


def jpeg(tile: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def labelled_patches() -> dict[str, tuple[np.ndarray, float, int]]:
    """tissue -> (padded crops, their mpp, the 8 um shift in pixels). Each source is measured
    at its own resolution: CMU's recorded 0.499 um/px, the target image's ~0.25 um/px (its
    448 px patches are 112 um across)."""
    cmu, target = real_sources()
    groups = {}
    for name, source, stride in (("skin", cmu, 150), ("carcinoma", target, 100)):
        shift = round(SHIFT_UM / source.mpp)
        groups[name] = (np.stack(crops(source.rgb, stride, shift)), source.mpp, shift)
    return groups


def calibrate(encoder: MorphologyEncoder) -> dict[str, object]:
    names, bases, positives = [], [], {}
    for name, (padded, mpp, shift) in labelled_patches().items():
        stack = np.ascontiguousarray(padded[:, :SIDE, :SIDE])
        base, _ = encoder.embed(stack, mpp)
        variants = {
            "hflip": stack[:, :, ::-1],
            "vflip": stack[:, ::-1],
            "rot90": np.rot90(stack, axes=(1, 2)),
            "shift_8um": padded[:, shift : shift + SIDE, shift : shift + SIDE],
            "jpeg_q75": np.stack([jpeg(t, 75) for t in stack]),
        }
        for variant, pixels in variants.items():
            emb, _ = encoder.embed(np.ascontiguousarray(pixels), mpp)
            positives.setdefault(variant, []).append(np.sum(base * emb, axis=1))
        names += [name] * len(stack)
        bases.append(base)
    base = np.concatenate(bases)
    positives = {variant: np.concatenate(parts) for variant, parts in positives.items()}
    cosine = base @ base.T
    labels = np.array(names)
    upper = np.triu(np.ones_like(cosine, dtype=bool), 1)
    different = upper & (labels[:, None] != labels[None, :])
    same = upper & (labels[:, None] == labels[None, :])
    all_pos = np.concatenate(list(positives.values()))
    negatives = cosine[different]
    same_pairs = cosine[same]
    # Most re-scan copies above, while distinct fields of one tissue mostly stay apart:
    # the 5th percentile of the positives, never below the different-tissue pairs.
    recommended = max(float(np.floor(np.quantile(all_pos, 0.05) * 1000) / 1000), float(negatives.max()))
    return {
        "patches": dict(Counter(names)),
        "positives": {k: (float(v.min()), float(np.median(v))) for k, v in positives.items()},
        "negatives_different_tissue": (
            float(np.median(negatives)),
            float(np.quantile(negatives, 0.99)),
            float(negatives.max()),
        ),
        "same_tissue_median": float(np.median(cosine[same])),
        "recommended": recommended,
        "same_tissue_above_recommended": float((same_pairs >= recommended).mean()),
        "quantiles": {
            q: (float(np.quantile(all_pos, q)), float(np.quantile(same_pairs, 1 - q)))
            for q in (0.01, 0.05, 0.10)
        },
        "negatives_above_recommended": float((negatives >= recommended).mean()),
        "positives_below_recommended": float((all_pos < recommended).mean()),
    }


def main() -> int:
    encoder = MorphologyEncoder()
    result = calibrate(encoder)
    print(f"encoder {encoder.encoder_id}, declared threshold {encoder.dedup_threshold}")
    print(f"patches per tissue: {result['patches']}")
    for variant, (low, median) in result["positives"].items():
        print(f"  positive {variant:10s} min {low:.4f} median {median:.4f}")
    median, p99, high = result["negatives_different_tissue"]
    print(f"  different tissue: median {median:.4f} p99 {p99:.4f} max {high:.4f}")
    print(f"  same tissue, different place: median {result['same_tissue_median']:.4f}")
    for q, (pos, same) in result["quantiles"].items():
        print(f"  positives p{q:.0%} {pos:.4f}; same tissue p{1 - q:.0%} {same:.4f}")
    print(f"  same-tissue pairs above the recommendation: {result['same_tissue_above_recommended']:.2%}")
    print(
        f"recommended threshold {result['recommended']:.3f}: "
        f"{result['negatives_above_recommended']:.2%} of different-tissue pairs above, "
        f"{result['positives_below_recommended']:.2%} of positives below"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
