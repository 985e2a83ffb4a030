"""The landing zone resource: where new slide files arrive."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pathgen_dagster.lib.ingest.registry import LandingFile, landing_files


class SlideStore(dg.ConfigurableResource):
    """Slide files under ``landing`` (searched recursively; ids from file names).

    Attributes:
        landing: folder where scanners or users drop slide files; ``./landing`` by default.
        allowed_link_roots: ``:``-separated folders that symlinks in the landing zone may
            point into (``PATHGEN_ALLOWED_LINK_ROOTS``); links elsewhere are skipped and
            recorded in ``slide_errors``. Empty: only links inside the landing zone.
    """

    landing: str = "landing"
    allowed_link_roots: str = ""

    @property
    def path(self) -> Path:
        return Path(self.landing).resolve()

    @property
    def link_roots(self) -> tuple[Path, ...]:
        return tuple(Path(root) for root in self.allowed_link_roots.split(":") if root.strip())

    def files(self) -> list[LandingFile]:
        """Every slide-suffixed file of the landing zone with its id (link policy applied)."""
        return landing_files(self.path, allowed_roots=self.link_roots)

    def locate(self, slide_id: str) -> LandingFile:
        """The landing file registered as ``slide_id``; a clear error when it is gone."""
        for landing_file in self.files():
            if landing_file.slide_id == slide_id:
                return landing_file
        raise FileNotFoundError(
            f"slide {slide_id!r}: no file in the landing zone {self.path} has this id. If that "
            "is not the folder the slide was registered from, point PATHGEN_LANDING at the "
            "right one (the shell's value wins over .env); otherwise restore the file, or "
            "delete the partition in the Dagster UI"
        )
