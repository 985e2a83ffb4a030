"""The Dagster code location: every stage asset, quality check, resource and sensor.

Places come from environment variables (``PATHGEN_LAKEHOUSE``, ``PATHGEN_LANDING``) so the
same code runs on a laptop and on a team's instance; the shipped ``.env`` sets them for
``dagster dev`` and the Makefile exports them.
"""

import dagster as dg

import assets
import quality
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.slide_store import SlideStore
from pathgen_dagster.sensors import landing_sensor

# At most this many steps of one run execute at once: tile reads and model calls are
# memory-heavy, and a pool only limits concurrency across runs, not inside one (FACTS.md).
MAX_CONCURRENT_STEPS = 2


def resources() -> dict[str, dg.ConfigurableResource]:
    """The resources every asset, check and sensor may ask for, by key."""
    return {
        "lakehouse": Lakehouse(root=dg.EnvVar("PATHGEN_LAKEHOUSE")),
        "slide_store": SlideStore(landing=dg.EnvVar("PATHGEN_LANDING")),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_package_module(assets),
        asset_checks=dg.load_asset_checks_from_package_module(quality),
        sensors=[landing_sensor],
        resources=resources(),
        executor=dg.multiprocess_executor.configured({"max_concurrent": MAX_CONCURRENT_STEPS}),
    )
