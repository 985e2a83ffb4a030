"""caption_quality verdicts do not depend on commit order (issue 16, "Verdicts depend on timing").

Two slides with byte-identical patches and captions are checked in both commit orders.
Before the fix the slide checked second saw the first one's passed captions and
quarantined its own as duplicates (and two racing steps both passed).
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from assets.caption_quality import caption_quality
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.schemas import CAPTIONS, PATCHES, REVISED_DESCRIPTIONS
from pathgen_dagster.partitions import SLIDES_PARTITION
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from tests.assets.test_training_pairs import complete

SLIDES = ("twin-a", "twin-b")
FACTS = json.loads((Path(__file__).parents[1] / "assets" / "facts_example.json").read_text())
TEXT = (
    "H&E-stained skin tissue covering most of the field. The tissue is densely cellular. "
    "Abundant eosinophilic stroma lies between the cells."
)
CAPTION = "Densely cellular skin tissue with abundant eosinophilic stroma."


def write_twin(lakehouse: Lakehouse, slide_id: str) -> None:
    rows: dict[str, list[dict]] = {PATCHES.name: [], REVISED_DESCRIPTIONS.name: [], CAPTIONS.name: []}
    for index in range(3):
        key = {"patch_id": f"tile-{index}", "slide_id": slide_id}
        rows[PATCHES.name].append(
            {
                **key,
                "facts_json": json.dumps(FACTS),
                "tissue_site": "skin",
                "mpp_source": "slide",
                "image_sha256": "same-bytes",
            }
        )
        agreeing = Evidence("watershed-test", 40, 9000.0, FACTS["cellularity"], FACTS["cellularity"])
        rows[REVISED_DESCRIPTIONS.name].append(
            {**key, "draft": TEXT, "revised": TEXT, "edits_json": "[]", "evidence_json": agreeing.to_json()}
        )
        rows[CAPTIONS.name].append({**key, "caption": f"{CAPTION[:-1]}, field {index}."})
    for spec in (PATCHES, REVISED_DESCRIPTIONS, CAPTIONS):
        frame = pl.DataFrame(
            [complete(spec, values) for values in rows[spec.name]],
            schema=pl.from_arrow(spec.schema.empty_table()).schema,
        )
        lakehouse.write_slide(spec.name, slide_id, frame)


def check(lakehouse: Lakehouse, slide_id: str) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SLIDES_PARTITION, list(SLIDES))
        result = dg.materialize(
            [caption_quality],
            partition_key=slide_id,
            instance=instance,
            resources={"lakehouse": lakehouse, "encoders": Encoders()},
            selection=[caption_quality],
            raise_on_error=True,
        )
        assert result.success


def verdicts(lakehouse: Lakehouse) -> list[tuple]:
    rows = lakehouse.read("caption_quality", columns=["slide_id", "patch_id", "passed", "failed_rules"])
    return sorted(
        (r["slide_id"], r["patch_id"], r["passed"], tuple(r["failed_rules"]))
        for r in rows.iter_rows(named=True)
    )


def test_verdicts_do_not_depend_on_which_twin_is_committed_first(tmp_path: Path) -> None:
    # If a slide's verdicts read nothing another slide commits, a race between the two
    # steps cannot change them either: each order of commits stands for one outcome of it.
    outcomes = {}
    for order in (SLIDES, SLIDES[::-1]):
        lakehouse = Lakehouse(root=str(tmp_path / "-".join(order)))
        for slide_id in SLIDES:
            write_twin(lakehouse, slide_id)
        for slide_id in order:
            check(lakehouse, slide_id)
        outcomes[order] = verdicts(lakehouse)
    first, second = outcomes.values()
    assert first == second and len(first) == 6
    by_slide = {s: [v[1:] for v in first if v[0] == s] for s in SLIDES}
    assert by_slide["twin-a"] == by_slide["twin-b"]
