"""The second detector on real slides: disagreement, revision edits, quarantine per rule.

    .venv/bin/python scripts/bench_evidence.py --lakehouse LAKEHOUSE   # demo slides' patches
    .venv/bin/python scripts/bench_evidence.py --yield-slide           # the 264-tile 3-tissue slide

For every patch (the ``patches`` table of a lakehouse, or the patches selection keeps on the
three-tissue slide of ``lib/selection/yield_check.py``) the grounded chain runs twice in the
same process, on the same patches: **before**, the revision checks the draft against the
facts the draft was written from (issue 10: 0 edits); **after**, it also has the second
detector's re-measurement (``lib/quality/evidence.py``). Both are judged by the same rule
set. Prints per slide: patches, share where the two detectors' cellularity bands disagree,
edits per 100 patches, and the quarantine share of every rule that quarantines anything.
"""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter

import numpy as np
from PIL import Image

from pathgen_dagster.lib.captions.agents import AGENTS, PatchInput, run_agent
from pathgen_dagster.lib.captions.verbalize import facts_sentence
from pathgen_dagster.lib.quality import evidence
from pathgen_dagster.lib.quality.fidelity import RULE_NAMES, SlideInputs, judge, measure_slide
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.resources.encoders import Encoders


def chain(items: list[PatchInput], *, with_evidence: bool) -> tuple[list, list, list]:
    drafts = run_agent(AGENTS["description"], items, session=None, cache=None)
    revise = [
        PatchInput(i.patch_id, i.facts, i.tissue_site, previous=d.text,
                   evidence=i.evidence if with_evidence else None)
        for i, d in zip(items, drafts, strict=True)
    ]
    revisions = run_agent(AGENTS["revision"], revise, session=None, cache=None)
    summarise = [
        PatchInput(i.patch_id, i.facts, i.tissue_site, previous=r.text)
        for i, r in zip(items, revisions, strict=True)
    ]
    return drafts, revisions, run_agent(AGENTS["summary"], summarise, session=None, cache=None)


def judge_slide(items, drafts, revisions, captions, encode) -> list:
    inputs = SlideInputs(
        captions=[{"patch_id": c.patch_id, "caption": c.text} for c in captions],
        revisions={
            r.patch_id: {"draft": d.text, "revised": r.text, "edits_json": json.dumps(list(r.edits))}
            for d, r in zip(drafts, revisions, strict=True)
        },
        facts={i.patch_id: i.facts for i in items},
        evidence={i.patch_id: i.evidence for i in items},
    )
    return [judge(m) for m in measure_slide(inputs, encode=encode).measures]


def report(name: str, items: list[PatchInput], encode) -> None:
    scaled = [i for i in items if i.evidence.cellularity != "unknown"]
    disputed = sum(bool(i.evidence.disputed) for i in items)
    print(f"\n== {name}: {len(items)} patches, detectors disagree on cellularity in "
          f"{disputed} of {len(scaled)} with a known scale ({disputed / max(len(scaled), 1):.0%})")
    results = {}
    for label, with_evidence in (("before", False), ("after", True)):
        drafts, revisions, captions = chain(items, with_evidence=with_evidence)
        verdicts = judge_slide(items, drafts, revisions, captions, encode)
        edits = Counter(e["op"] for r in revisions for e in r.edits)
        failed = Counter(rule for v in verdicts for rule in v.failed)
        results[label] = (edits, failed, sum(v.passed for v in verdicts))
    for label, (edits, _, passed) in results.items():
        total = sum(edits.values())
        print(f"{label:6s} edits per 100 patches {100 * total / len(items):6.1f} {dict(edits)}; "
              f"passing every rule {passed}/{len(items)}")
    rules = [r for r in RULE_NAMES if any(results[k][1][r] for k in results)]
    print(f"{'rule':32s} {'before':>8s} {'after':>8s}")
    for rule in rules:
        print(f"{rule:32s} {results['before'][1][rule] / len(items):8.1%} "
              f"{results['after'][1][rule] / len(items):8.1%}")


def contact_sheet(items: list[PatchInput], path: str, side: int = 300) -> None:
    """The patches the detectors disagree on, each labelled with both counts and bands."""
    from PIL import ImageDraw

    disputed = [i for i in items if i.evidence.disputed][:12]
    sheet = Image.new("RGB", (4 * side, 3 * (side + 16)), "white")
    for k, item in enumerate(disputed):
        x, y = (k % 4) * side, (k // 4) * (side + 16)
        image = Image.open(io.BytesIO(item.image_jpeg)).convert("RGB").resize((side, side))
        sheet.paste(image, (x, y + 16))
        ImageDraw.Draw(sheet).text(
            (x + 2, y + 2),
            f"{k} LoG {item.facts.nuclei_count_log} {item.facts.cellularity} | "
            f"WS {item.evidence.nuclei_count} {item.evidence.cellularity}",
            fill="black",
        )
        print(f"sheet {k}: {item.patch_id} LoG {item.facts.nuclei_count_log} "
              f"({item.facts.nuclei_density_log_per_mm2:.0f}/mm2, {item.facts.cellularity}) "
              f"watershed {item.evidence.nuclei_count} ({item.evidence.nuclei_density_per_mm2:.0f}/mm2, "
              f"{item.evidence.cellularity})")
    sheet.save(path)


def lakehouse_slides(root: str):
    from pathgen_dagster.resources.lakehouse import Lakehouse

    lakehouse = Lakehouse(root=root)
    patches = lakehouse.read("patches", columns=["slide_id", "patch_id", "facts_json", "image_jpeg"])
    for slide_id in sorted(set(patches["slide_id"])):
        items = []
        for row in patches.filter(slide_id=slide_id).sort("patch_id").iter_rows(named=True):
            facts = MorphologyFacts.from_dict(json.loads(row["facts_json"]))
            items.append(PatchInput(row["patch_id"], facts, image_jpeg=row["image_jpeg"],
                                    evidence=evidence.measure_jpeg(row["image_jpeg"], facts)))
        yield slide_id, items


def yield_slide(encoders: Encoders):
    from pathgen_dagster.lib.selection import yield_check
    from pathgen_dagster.lib.selection.prompts_library import PromptLibrary
    from pathgen_dagster.lib.selection.selection import DEFAULT_SELECTION, select, with_encoder_threshold

    tiles, tissues, _, mpps = yield_check.build()
    embeddings, facts = yield_check.embed(encoders, tiles, mpps)
    retrieval = encoders.retrieval_embeddings(embeddings, [facts_sentence(f) for f in facts])
    prompts = encoders.encode_texts(list(PromptLibrary.load().resolve("generic").prompts))
    cfg = with_encoder_threshold(DEFAULT_SELECTION, encoders.dedup_threshold)
    kept = select(embeddings, prompt_emb=prompts, retrieval_emb=retrieval, cfg=cfg).tile_index
    items = []
    for i in kept.tolist():
        buffer = io.BytesIO()
        Image.fromarray(tiles[i]).save(buffer, "JPEG", quality=90)
        rgb = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        items.append(PatchInput(f"yield_{i:03d}_{tissues[i]}", facts[i], image_jpeg=buffer.getvalue(),
                                evidence=evidence.measure(rgb, facts[i])))
    return "three-tissue slide (yield_check, 264 tiles)", items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lakehouse")
    parser.add_argument("--yield-slide", action="store_true")
    parser.add_argument("--sheet", help="write a contact sheet of disputed patches here (PNG)")
    args = parser.parse_args()
    encoders = Encoders()
    encode = encoders.sentences.encode
    everything: list[PatchInput] = []
    if args.lakehouse:
        for slide_id, items in lakehouse_slides(args.lakehouse):
            report(slide_id, items, encode)
            everything += items
        report("all demo slides", everything, encode)
    if args.yield_slide:
        name, items = yield_slide(encoders)
        report(name, items, encode)
        everything = items
    if args.sheet:
        contact_sheet(everything, args.sheet)


if __name__ == "__main__":
    main()
