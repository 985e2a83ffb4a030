"""One per-slide stage run as direct calls of its asset and checks: no run, no executor.

    python scripts/direct_stage.py STAGE SLIDE_ID     # the stage's asset, then its checks
    python scripts/direct_stage.py --start-up         # the same imports and definitions only

``scripts/bench_pipeline.py`` times this beside ``pathgen run --select STAGE``: the same
asset body and the same checks on the same Delta tables, invoked as plain Python
(Dagster's direct invocation), so the difference between the two is what the orchestration
costs (run and step launch, event log, executor). The environment (``PATHGEN_LAKEHOUSE``,
``PATHGEN_LANDING``, ``DAGSTER_HOME``) is the stage command's.
"""

from __future__ import annotations

import os
import sys

import dagster as dg

# Dagster's public build_asset_check_context takes no partition key, and every check here is
# partitioned by slide; this is the context it builds, given the op context that has one.
from dagster._core.execution.context.invocation import DirectAssetCheckExecutionContext

from pathgen_dagster.definitions import defs


def run_stage(stage: str, slide_id: str) -> None:
    definitions = defs()
    repository = definitions.get_repository_def()
    key = dg.AssetKey(stage)
    asset = definitions.get_assets_def(key)
    resources = {
        name: definitions.resources[name]
        for name in asset.required_resource_keys
        if name in definitions.resources
    }
    with dg.DagsterInstance.get() as instance:
        asset(dg.build_asset_context(partition_key=slide_id, resources=resources, instance=instance))
        for check_key, check in repository.asset_checks_defs_by_key.items():
            if check_key.asset_key == key:
                context = dg.build_op_context(partition_key=slide_id, instance=instance)
                check(DirectAssetCheckExecutionContext(context))


if __name__ == "__main__":
    if sys.argv[1:] == ["--start-up"]:
        defs().get_repository_def()
    else:
        run_stage(*sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # delta-rs threads can abort a normal interpreter exit (FACTS.md), as in runner.py
