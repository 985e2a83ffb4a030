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

import numpy as np
import openslide
from PIL import Image

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, TIATOOLBOX_TARGET, fetch
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder

SIDE = 448  # 224 um at 0.5 um/px: a patch of PathGen's physical size scale (672 px at 40x / 1.5)
MPP = 0.5
SHIFT = 16  # 8 um


def crops(image: np.ndarray, box: tuple[int, int, int, int], stride: int) -> list[np.ndarray]:
    x0, y0, x1, y1 = box
    out = []
    for y in range(y0, min(y1, image.shape[0]) - SIDE - SHIFT + 1, stride):
        for x in range(x0, min(x1, image.shape[1]) - SIDE - SHIFT + 1, stride):
            # SHIFT extra pixels, so the shifted copy is real neighbouring tissue.
            tile = image[y : y + SIDE + SHIFT, x : x + SIDE + SHIFT]
            white = (tile.mean(axis=2) > 215).mean()
            if white < 0.8:
                out.append(np.ascontiguousarray(tile))
    return out


def jpeg(tile: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def labelled_patches() -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    with openslide.OpenSlide(str(fetch(CMU_SMALL_REGION))) as slide:
        cmu = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    target = np.asarray(Image.open(fetch(TIATOOLBOX_TARGET)).convert("RGB"))
    groups = {"skin": crops(cmu, (0, 0, cmu.shape[1], cmu.shape[0]), 150)}
    groups["carcinoma"] = crops(target, (0, 0, 1000, 1000), 100)
    return groups, {"cmu": cmu, "target": target}


def calibrate(encoder: MorphologyEncoder) -> dict[str, object]:
    groups, _ = labelled_patches()
    names, tiles = [], []
    for name, members in groups.items():
        names += [name] * len(members)
        tiles += members
    padded = np.stack(tiles)
    stack = np.ascontiguousarray(padded[:, :SIDE, :SIDE])
    base, _ = encoder.embed(stack, MPP)
    variants = {
        "hflip": stack[:, :, ::-1],
        "vflip": stack[:, ::-1],
        "rot90": np.rot90(stack, axes=(1, 2)),
        "shift_8um": padded[:, SHIFT:, SHIFT:],
        "jpeg_q75": np.stack([jpeg(t, 75) for t in stack]),
    }
    positives = {}
    for variant, pixels in variants.items():
        emb, _ = encoder.embed(np.ascontiguousarray(pixels), MPP)
        positives[variant] = np.sum(base * emb, axis=1)
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
        "patches": {name: len(m) for name, m in groups.items()},
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
