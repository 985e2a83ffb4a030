"""The Dagster code location: every stage asset, quality check, resource and sensor.

Places come from environment variables (``PATHGEN_LAKEHOUSE``, ``PATHGEN_LANDING``) so the
same code runs on a laptop and on a team's instance; the shipped ``.env`` sets them for
``dagster dev`` and the Makefile exports them.
"""

import os

import dagster as dg

import assets
import quality
from pathgen_dagster.lib.ingest.registry import LINK_ROOTS_ENV
from pathgen_dagster.maintenance import lakehouse_maintenance, maintenance_schedule
from pathgen_dagster.resources.encoders import Encoders
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer, configured_backend
from pathgen_dagster.resources.slide_store import SlideStore
from pathgen_dagster.run_health import run_health_sensor
from pathgen_dagster.sensors import landing_sensor, whole_dataset_sensor

# At most this many steps of one run execute at once: tile reads and model calls are
# memory-heavy, and a pool only limits concurrency across runs, not inside one (FACTS.md).
MAX_CONCURRENT_STEPS = 2


def llm_server() -> LLMServer:
    """The caption agents' model server: the measured default, or vLLM from the environment.

    ``PATHGEN_LLM_BACKEND`` picks the backend; for ``vllm``, ``PATHGEN_LLM_URL``,
    ``PATHGEN_LLM_MODEL``, ``PATHGEN_LLM_API_KEY`` (optional) and ``PATHGEN_LLM_VISION``
    (``1`` for a vision-language model) say where and what it is. Read when the code
    location loads, never at import.
    """
    backend = configured_backend()
    if backend != "vllm":
        return LLMServer(backend=backend)
    return LLMServer(
        backend="vllm",
        base_url=dg.EnvVar("PATHGEN_LLM_URL"),
        model=dg.EnvVar("PATHGEN_LLM_MODEL"),
        api_key=dg.EnvVar("PATHGEN_LLM_API_KEY") if os.environ.get("PATHGEN_LLM_API_KEY") else None,
        vision=os.environ.get("PATHGEN_LLM_VISION") == "1",
    )


def resources() -> dict[str, dg.ConfigurableResource]:
    """The resources every asset, check and sensor may ask for, by key."""
    return {
        "llm": llm_server(),
        "lakehouse": Lakehouse.from_env(deferred=True),
        "slide_store": SlideStore(
            landing=dg.EnvVar("PATHGEN_LANDING"),
            allowed_link_roots=os.environ.get(LINK_ROOTS_ENV, ""),
        ),
        "encoders": Encoders(),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_package_module(assets),
        asset_checks=dg.load_asset_checks_from_package_module(quality),
        sensors=[landing_sensor, run_health_sensor, whole_dataset_sensor],
        jobs=[lakehouse_maintenance],
        schedules=[maintenance_schedule],
        resources=resources(),
        executor=dg.multiprocess_executor.configured(
            {
                "max_concurrent": MAX_CONCURRENT_STEPS,
                # Steps fork from a server that has imported the code location once: a fresh
                # interpreter per step re-imported torch and great-expectations (8-17 s a step).
                # process_guard first: the forkserver and its steps die with the run worker.
                # torch is named: the code location itself no longer imports it (commands that
                # need no encoder start without it), but most steps do.
                "start_method": {
                    "forkserver": {
                        "preload_modules": [
                            "pathgen_dagster.process_guard",
                            "torch",
                            "pathgen_dagster.definitions",
                        ]
                    }
                },
            }
        ),
    )
