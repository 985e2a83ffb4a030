"""Patches next to their captions, for reading claim by claim (looking is a measurement).

Draws ``--count`` patches at random (seeded) from the lakehouse's ``captions`` (every
status, so quarantined ones are looked at too), and writes one PNG per patch under ``--out``:
the patch at 2/3 of its size beside its caption, caption status, revised description, and
the measured bands it was written from; prints one index line per patch. The review itself
(supported / unsupported / contradicted per claim) is done by looking at the PNGs.

    .venv/bin/python scripts/review_captions.py --lakehouse lakehouse --count 20 --out build/review
"""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from pathgen_dagster.resources.lakehouse import Lakehouse

BANDS_SHOWN = ("cellularity", "nuclear_size", "pleomorphism", "stroma", "lumen_or_fat", "inflammation_hint")


def panel(image_jpeg: bytes, lines: list[str], side: int = 448, width: int = 1100) -> Image.Image:
    patch = Image.open(io.BytesIO(image_jpeg)).convert("RGB").resize((side, side))
    text = [w for line in lines for w in (textwrap.wrap(line, 92) or [""])]
    sheet = Image.new("RGB", (width, max(side, 14 * len(text) + 8)), "white")
    sheet.paste(patch, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(text):
        draw.text((side + 10, 4 + 14 * k), line, fill="black")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lakehouse", default="lakehouse")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("build/review"))
    args = parser.parse_args()
    lakehouse = Lakehouse(root=args.lakehouse)
    captions = lakehouse.read("captions", columns=["slide_id", "patch_id", "caption", "status"])
    descriptions = lakehouse.read(
        "revised_descriptions", columns=["slide_id", "patch_id", "revised", "n_edits"]
    )
    patches = lakehouse.read("patches", columns=["slide_id", "patch_id", "facts_json", "image_jpeg"])
    rows = (
        captions.join(descriptions, on=["slide_id", "patch_id"])
        .join(patches, on=["slide_id", "patch_id"])
        .sample(n=min(args.count, captions.height), seed=args.seed)
        .sort(["slide_id", "patch_id"])
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for k, row in enumerate(rows.iter_rows(named=True)):
        facts = json.loads(row["facts_json"])
        bands = ", ".join(f"{b}={facts.get(b)}" for b in BANDS_SHOWN)
        found = ", ".join(
            f"{n}={facts.get(f'{n}_fraction', float('nan')):.2f}" for n in ("keratin", "collagen", "ink")
        )
        lines = [
            f"#{k:02d} {row['slide_id']} {row['patch_id']} [{row['status']}]",
            "",
            f"CAPTION: {row['caption']}",
            "",
            f"REVISED DESCRIPTION ({row['n_edits']} edits): {row['revised']}",
            "",
            f"bands: {bands}",
            f"finding measures: {found}; mpp {facts.get('mpp_um')}",
            f"tissue fraction {facts.get('tissue_fraction'):.2f}",
        ]
        panel(row["image_jpeg"], lines).save(args.out / f"review_{k:02d}.png")
        print(f"#{k:02d} {row['slide_id']} {row['patch_id']} [{row['status']}] {row['caption']}")


if __name__ == "__main__":
    main()
