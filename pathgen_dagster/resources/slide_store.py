"""The landing zone resource: where new slide files arrive."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pathgen_dagster.lib.ingest.registry import LandingFile, landing_files


class SlideStore(dg.ConfigurableResource):
    """Slide files under ``landing`` (searched recursively; ids from file names).

    Attributes:
        landing: folder where scanners or users drop slide files; ``./landing`` by default.
    """

    landing: str = "landing"

    @property
    def path(self) -> Path:
        return Path(self.landing).resolve()

    def files(self) -> list[LandingFile]:
        """Every slide-suffixed file of the landing zone with its id."""
        return landing_files(self.path)

    def locate(self, slide_id: str) -> LandingFile:
        """The landing file registered as ``slide_id``; a clear error when it is gone."""
        for landing_file in self.files():
            if landing_file.slide_id == slide_id:
                return landing_file
        raise FileNotFoundError(
            f"slide {slide_id!r}: no file in the landing zone {self.path} has this id any more; "
            "restore the file, or delete the partition in the Dagster UI"
        )
