"""Benchmark: how varied the grounded backend's captions are, on real H&E tiles.

Two corpora, measured by the morphology encoder and captioned by the default chain
(describe -> revise -> summarize, seeded by the tile id, as the agents do):

* ``demo``: 672 px tiles of the CMU slide (0.499 um/px) at a 112 px stride and of
  tiatoolbox's carcinoma image (0.25 um/px) at an 82 px stride (overlapping: many patches);
* ``large``: 672 px tissue tiles, at half-tile strides, of the sample zone's 40x multi-tissue slide
  (``synthetic-aperio-40x.svs``: 12 islands of real skin and carcinoma, 0.25 um/px),
  composed in memory exactly as ``pathgen samples`` writes it;
* ``--slide PATH`` (optional): N tissue tiles drawn at random from the project's own tile grid
  of any slide OpenSlide reads, at the slide's recorded mpp (e.g. the 80k x 60k benchmark
  slide of ``pathgen samples --large``, 2,518 tissue tiles).

Printed per corpus: distinct captions / captions, distinct content words, sentence
skeletons (content words replaced by X), the share of captions each of the ten most
common 4-word phrases appears in; then the number of distinct captions the verbaliser
can produce (fact combinations x wording choices), against the 1,944 of the old one.

    .venv/bin/python scripts/caption_diversity.py [--large-tiles 300] [--slide PATH --slide-tiles 400]
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import time
from collections import Counter

import numpy as np
import openslide
import torch

from pathgen_dagster.lib.captions import verbalize as v
from pathgen_dagster.lib.ingest import samples, tiling, wsi
from pathgen_dagster.lib.selection.facts import BANDS, EVIDENCE_BANDS
from pathgen_dagster.lib.selection.morphology import measure

TILE = 672
STOPWORDS = frozenset(
    {
        "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "without", "by",
        "from", "for", "is", "are", "be", "it", "its", "this", "that", "these", "those", "as",
        "into", "between", "within", "which", "while", "but", "so", "than", "then", "there",
        "their", "one",
    }
)


def tissue_share(tile: np.ndarray) -> float:
    rgb = tile.astype(np.float32)
    saturation = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
    return float(1 - ((rgb.mean(-1) >= 204) & (saturation <= 0.18)).mean())


def grid(image: np.ndarray, stride: int) -> list[tuple[int, int]]:
    return [
        (x, y)
        for y in range(0, image.shape[0] - TILE + 1, stride)
        for x in range(0, image.shape[1] - TILE + 1, stride)
    ]


def demo_tiles() -> list[tuple[str, np.ndarray, float]]:
    cmu, target = samples.real_sources()
    out = []
    for name, source, stride in (("cmu", cmu, 112), ("target", target, 82)):
        for x, y in grid(source.rgb, stride):
            tile = source.rgb[y : y + TILE, x : x + TILE]
            if tissue_share(tile) >= 0.5:
                out.append((f"{name}_{x}_{y}", np.ascontiguousarray(tile), source.mpp))
    return out


def large_tiles(limit: int) -> list[tuple[str, np.ndarray, float]]:
    recipe = samples.SYNTHETIC_SLIDES[0]
    islands = samples.place_islands(recipe, samples.real_sources())
    out = []
    for island in islands:
        h, w = island.alpha.shape[:2]
        for y in range(island.y, island.y + h - TILE + 1, TILE // 2):
            for x in range(island.x, island.x + w - TILE + 1, TILE // 2):
                tile = samples.compose(islands, x, y, TILE, TILE, 1).astype(np.uint8)
                if tissue_share(tile) >= 0.5:
                    out.append((f"large_{x}_{y}", tile, recipe.mpp))
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(len(out), size=min(limit, len(out)), replace=False))
    return [out[i] for i in keep]


def slide_tiles(path: str, limit: int) -> list[tuple[str, np.ndarray, float]]:
    mpp = wsi.inspect(path).mpp_x
    if mpp is None:
        raise SystemExit(f"{path}: the slide records no mpp; this benchmark needs one")
    with openslide.OpenSlide(path) as slide:
        grid, _ = tiling.tile_grid(slide, tiling.TilingConfig(), mpp)
        keep = sorted(np.random.default_rng(0).choice(len(grid), min(limit, len(grid)), replace=False))
        xs, ys = [int(grid.xs[i]) for i in keep], [int(grid.ys[i]) for i in keep]
        tiles = wsi.read_tiles(slide, xs, ys, grid.size_px)
    return [(f"slide_{x}_{y}", tile, mpp) for x, y, tile in zip(xs, ys, tiles, strict=True)]


def caption_tiles(tiles: list[tuple[str, np.ndarray, float]]) -> tuple[list[str], float]:
    captions, cpu = [], time.process_time()
    for tile_id, tile, mpp in tiles:
        facts = measure(tile[None], mpp)[0][0]
        draft = v.describe(facts, tissue_site=None, seed=tile_id)
        revised, _ = v.revise(draft, facts, seed=tile_id)
        captions.append(v.summarize(revised, facts, seed=tile_id))
    return captions, time.process_time() - cpu


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z&][a-z&-]*", text.lower()) if w not in STOPWORDS]


def skeleton(text: str) -> str:
    tokens = re.findall(r"[A-Za-z&][A-Za-z&-]*|[^\sA-Za-z]", text)
    shape = ["X" if t.lower() not in STOPWORDS and t[0].isalpha() else t.lower() for t in tokens]
    return re.sub(r"(X )+X", "X", " ".join(shape))


def report(name: str, captions: list[str], cpu_s: float) -> None:
    n = len(captions)
    words = Counter(w for c in captions for w in set(content_words(c)))
    skeletons = Counter(skeleton(c) for c in captions)
    grams = Counter(
        g
        for c in captions
        for g in {tuple(t) for t in zip(*(c.lower().split()[i:] for i in range(4)), strict=False)}
    )
    print(f"\n== {name}: {n} captions ({cpu_s / max(n, 1):.2f} CPU s per tile incl. measuring)")
    print(f"distinct captions / captions      {len(set(captions)) / n:.3f} ({len(set(captions))})")
    print(f"distinct content words            {len(words)}")
    print(f"sentence skeletons                {len(skeletons)}")
    print("top ten 4-word phrases (share of captions):")
    for gram, count in grams.most_common(10):
        print(f"  {count / n:6.1%}  {' '.join(gram)}")
    for caption in captions[:: max(1, n // 5)][:5]:
        print(f"  e.g. {caption}")


def capacity() -> None:
    """Distinct captions the verbaliser can produce: fact combinations x wording choices."""
    names = [b for b in BANDS if b not in EVIDENCE_BANDS]
    combos = list(itertools.product(*(BANDS[n].labels for n in names)))
    finding_sets = list(itertools.product((False, True), repeat=len(v._FINDING_SLOTS)))
    total = 0
    for labels in combos:
        said = dict(zip(names, labels, strict=True))
        for present in finding_sets:
            n_items = 3 + sum(present) + (said["inflammation_hint"] == "possible")
            choices = (
                len(v._FRAMES)
                * min(len(v._ORDERS), math.factorial(min(3, n_items)))
                * (
                    len(v._CELLULAR_ADJECTIVES[said["cellularity"]])
                    + len(v._CELLULARITY_NOUNS[said["cellularity"]])
                )
                * len(v._SIZES[said["nuclear_size"]])
                * (
                    len(v._PLEOMORPHISM[said["pleomorphism"]])
                    + len(v._PLEOMORPHIC_ADVERBS[said["pleomorphism"]])
                )
                * len(v._STROMA_PHRASES[said["stroma"]])
                * len(v._SPACES_PHRASES[said["lumen_or_fat"]])
                * (len(v._INFLAMMATION_PHRASES[said["inflammation_hint"]]))
                * math.prod(
                    len(v._FINDING_PHRASES[n])
                    for n, p in zip(v._FINDING_SLOTS, present, strict=True)
                    if p
                )
            )
            total += choices * sum(len(sentences) for _, sentences in v._COVERAGE_SENTENCES)
    print(
        f"\n== capacity (site unknown): {len(combos)} band combinations x {len(finding_sets)} "
        f"finding sets x {len(v._COVERAGE_SENTENCES)} coverage bands"
    )
    print(f"upper bound of distinct captions: {total:,} (old verbaliser: 1,944)")


def empirical_capacity(tiles_facts: list) -> None:
    """Distinct captions the chain writes for one tile's facts as the seed (patch id) varies."""
    distinct = []
    for facts in tiles_facts:
        texts = set()
        for k in range(200):
            seed = f"cap{k}"
            texts.add(v.summarize(v.describe(facts, tissue_site=None, seed=seed), facts, seed=seed))
        distinct.append(len(texts))
    print(f"measured: distinct captions over 200 seeds per real tile's facts: {distinct}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-tiles", type=int, default=300)
    parser.add_argument("--slide", help="also caption tissue tiles of this slide")
    parser.add_argument("--slide-tiles", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo = demo_tiles()
    captions, cpu = caption_tiles(demo)
    report(f"demo ({len(demo)} tiles of the CMU slide and tiatoolbox's image)", captions, cpu)
    large = large_tiles(args.large_tiles)
    large_captions, large_cpu = caption_tiles(large)
    report(f"large 40x multi-tissue slide ({len(large)} tissue tiles)", large_captions, large_cpu)
    corpus, corpus_cpu = captions + large_captions, cpu + large_cpu
    if args.slide:
        tiles = slide_tiles(args.slide, args.slide_tiles)
        slide_captions, slide_cpu = caption_tiles(tiles)
        report(f"{args.slide} ({len(tiles)} random tissue tiles)", slide_captions, slide_cpu)
        corpus, corpus_cpu = corpus + slide_captions, corpus_cpu + slide_cpu
    first = corpus[:500]  # CPU: the corpus's mean per tile, for as many tiles
    report(f"first 500 captions of all ({len(corpus)})", first, corpus_cpu * len(first) / len(corpus))
    sample = [measure(t[None], mpp)[0][0] for _, t, mpp in demo[:: max(1, len(demo) // 8)][:8]]
    capacity()
    empirical_capacity(sample)


if __name__ == "__main__":
    main()
