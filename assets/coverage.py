"""Which registered slides a whole-dataset asset covers, and which it had to leave out.

Whole-dataset assets (``dataset_stats``, ``quarantine_report``, the exports) build from the
slides whose ``training_pairs`` partition has been materialized: a slide that failed (or has
not run yet) is left out, not a reason to fail the whole dataset. Each build says which
slides were left out, in its metadata and in a WARN check.
"""

from __future__ import annotations

import dagster as dg

from pathgen_dagster.lib.schemas import TRAINING_PAIRS
from pathgen_dagster.partitions import SLIDES_PARTITION

SLIDE_COVERAGE = "covers_every_slide"


def coverage_spec(asset: str) -> dg.AssetCheckSpec:
    """The WARN check a whole-dataset asset reports its slide coverage with."""
    return dg.AssetCheckSpec(
        SLIDE_COVERAGE,
        asset=asset,
        description="Warns when registered slides are missing from this build (their "
        "training_pairs never materialized: failed or not run); lists them.",
    )


def slide_coverage(instance: dg.DagsterInstance, asset: str) -> tuple[dict, dg.AssetCheckResult]:
    """Metadata (slides registered / included / missing) and the coverage check result."""
    registered = sorted(instance.get_dynamic_partitions(SLIDES_PARTITION))
    built = instance.get_materialized_partitions(dg.AssetKey(TRAINING_PAIRS.name))
    missing = [slide_id for slide_id in registered if slide_id not in built]
    metadata = {
        "slides_registered": len(registered),
        "slides_included": len(registered) - len(missing),
        "slides_missing": dg.MetadataValue.json(missing),
    }
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        text = (
            f"{asset} covers {len(registered) - len(missing)} of {len(registered)} registered slides; "
            f"left out (training_pairs not materialized: failed or not run): {shown}. "
            "Re-run those slides, then this asset."
        )
    else:
        text = f"{asset} covers all {len(registered)} registered slides"
    result = dg.AssetCheckResult(
        check_name=SLIDE_COVERAGE,
        asset_key=asset,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=text,
        metadata=metadata,
    )
    return metadata, result
