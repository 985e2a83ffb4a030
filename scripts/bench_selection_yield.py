"""Patches kept by selection on a 264-tile, three-tissue slide, per dedup threshold (issue 10).

    .venv/bin/python scripts/bench_selection_yield.py

Prints, for PathGen's CLIP threshold (0.88) and the morphology encoder's declared one:
tiles kept, kept per tissue, distinct fields covered, and groups kept more than once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from pathgen_dagster.lib.captions.verbalize import facts_sentence
from pathgen_dagster.lib.selection import yield_check
from pathgen_dagster.lib.selection.morphology import MorphologyEncoder
from pathgen_dagster.lib.selection.prompts_library import PromptLibrary
from pathgen_dagster.lib.selection.selection import DEFAULT_SELECTION, select
from pathgen_dagster.resources.encoders import Encoders


def run(thresholds: tuple[float, ...]) -> list[dict]:
    tiles, tissues, groups, mpps = yield_check.build()
    encoders = Encoders()
    embeddings, facts = yield_check.embed(encoders, tiles, mpps)
    retrieval = encoders.retrieval_embeddings(embeddings, [facts_sentence(f) for f in facts])
    prompts = encoders.encode_texts(list(PromptLibrary.load().resolve("generic").prompts))
    rows = []
    for threshold in thresholds:
        result = select(
            embeddings,
            prompt_emb=prompts,
            retrieval_emb=retrieval,
            cfg=replace(DEFAULT_SELECTION, dedup_threshold=threshold),
        )
        kept = result.tile_index.tolist()
        per_group = Counter(groups[i] for i in kept)
        rows.append(
            {
                "threshold": threshold,
                "tiles": len(tiles),
                "candidates": result.n_after_cap,
                "kept": len(kept),
                "per_tissue": dict(Counter(tissues[i] for i in kept)),
                "fields_covered": len(per_group),
                "fields": len(set(groups)),
                "groups_kept_twice_or_more": sum(n > 1 for n in per_group.values()),
            }
        )
    return rows


if __name__ == "__main__":
    for row in run((0.88, MorphologyEncoder.dedup_threshold, 0.98)):
        print(row)
