"""The quality report the demo prints: pass rates per rule over every slide, and the docs.

Also where the great-expectations data docs are (a local lakehouse or an object store) and
how a browser opens them: ``pathgen docs`` serves the site over HTTP, and the checks link
to it when ``PATHGEN_DATA_DOCS_URL`` says where it is served.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pathgen_dagster.lib.quality.fidelity import DEFAULT_CONFIG, RULES, gate_slide
from pathgen_dagster.lib.schemas import CAPTION_QUALITY
from pathgen_dagster.resources.lakehouse import Lakehouse
from quality.expectations import QUALITY_FOLDER

DATA_DOCS = f"{QUALITY_FOLDER}/data_docs"
DATA_DOCS_URL_ENV = "PATHGEN_DATA_DOCS_URL"


@dataclass(frozen=True)
class QualityReport:
    """Caption quality over the whole lakehouse.

    Attributes:
        rules: one row per rule: rule, severity, group, checked, passed, pass_rate.
        slides: one row per slide: captions, passed, quarantined, severe_failures,
            severe_failure_rate, gate ("pass" or "BLOCKED").
        data_docs: where the great-expectations data-docs index lies (a path, or a URL on
            an object store; None before any check ran).
    """

    rules: pl.DataFrame
    slides: pl.DataFrame
    data_docs: str | None

    def __str__(self) -> str:
        with pl.Config(
            tbl_rows=60, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_width_chars=160
        ):
            return (
                f"== caption quality: pass rate per rule ({self.slides['captions'].sum()} "
                f"captions, {len(self.slides)} slides)\n{self.rules}\n\n"
                f"== caption quality per slide\n{self.slides}\n\n"
                f"== great-expectations data docs: {self.data_docs or 'not built yet'}"
                f"{'  (open in a browser: pathgen docs)' if self.data_docs else ''}\n"
                '   quarantined captions: pathgen sql "SELECT slide_id, patch_id, '
                'failure_reasons FROM caption_quality WHERE NOT passed"'
            )


def quality_report(
    lakehouse: Lakehouse, *, max_severe_failure_rate: float = DEFAULT_CONFIG.max_severe_failure_rate
) -> QualityReport:
    """Pass rates per rule on all slides, the gate verdict per slide, and the docs path."""
    rows = lakehouse.read(
        CAPTION_QUALITY.name, columns=["slide_id", "rule_results_json", "passed", "severe_failure"]
    )
    results = [json.loads(value) for value in rows["rule_results_json"]]
    checked = len(results)
    rules = pl.DataFrame(
        {
            "rule": [r.name for r in RULES],
            "severity": [r.severity for r in RULES],
            "group": [r.group for r in RULES],
            "checked": [checked] * len(RULES),
            "passed": [sum(bool(res.get(r.name)) for res in results) for r in RULES],
        }
    ).with_columns(
        pass_rate=pl.when(pl.col("checked") > 0)
        .then((pl.col("passed") / pl.col("checked")).round(4))
        .otherwise(None)
    )
    by_slide: dict[str, list[dict]] = {}
    for slide_id, result in zip(rows["slide_id"], results, strict=True):
        by_slide.setdefault(slide_id, []).append(result)
    gates = [
        gate_slide(slide_id, by_slide[slide_id], max_rate=max_severe_failure_rate)
        for slide_id in sorted(by_slide)
    ]
    passed = (
        dict(rows.group_by("slide_id").agg(pl.col("passed").sum()).iter_rows()) if len(rows) else {}
    )
    slides = pl.DataFrame(
        {
            "slide_id": [g.slide_id for g in gates],
            "captions": [g.captions for g in gates],
            "passed": [int(passed.get(g.slide_id, 0)) for g in gates],
            "quarantined": [g.captions - int(passed.get(g.slide_id, 0)) for g in gates],
            "severe_failures": [g.severe_failures for g in gates],
            "severe_failure_rate": [round(g.severe_failure_rate, 4) for g in gates],
            "gate": ["pass" if g.passed else "BLOCKED" for g in gates],
        },
        schema={
            "slide_id": pl.String,
            "captions": pl.Int64,
            "passed": pl.Int64,
            "quarantined": pl.Int64,
            "severe_failures": pl.Int64,
            "severe_failure_rate": pl.Float64,
            "gate": pl.String,
        },
    )
    return QualityReport(rules=rules, slides=slides, data_docs=data_docs_index(lakehouse))


def data_docs_index(lakehouse: Lakehouse) -> str | None:
    """Where the data-docs ``index.html`` lies (path or object-store URL); None if unbuilt."""
    import pyarrow.fs as pafs

    fs, base = lakehouse.storage.filesystem()
    info = fs.get_file_info(f"{base}/{DATA_DOCS}/index.html")
    return lakehouse.location(f"{DATA_DOCS}/index.html") if info.type == pafs.FileType.File else None


def data_docs_links(relative_page: str | None, environ=os.environ) -> dict:
    """Check metadata for a data-docs page (``relative_page`` inside the site): a link a
    browser opens when ``PATHGEN_DATA_DOCS_URL`` says where ``pathgen docs`` serves the site,
    and how to serve it."""
    import dagster as dg

    base = environ.get(DATA_DOCS_URL_ENV, "").strip().rstrip("/")
    links = {"data_docs_how_to_open": dg.MetadataValue.md(
        "Serve the data docs with `pathgen docs` (default http://127.0.0.1:3001); with "
        f"`{DATA_DOCS_URL_ENV}` set to that address these checks link to the page."
    )}
    if base and relative_page:
        links["data_docs_url"] = dg.MetadataValue.url(f"{base}/{relative_page}")
        links["data_docs_index_url"] = dg.MetadataValue.url(f"{base}/index.html")
    return links


@contextlib.contextmanager
def serve_data_docs(lakehouse: Lakehouse, *, host: str = "127.0.0.1", port: int = 3001) -> Iterator[str]:
    """Serve the data-docs site over HTTP while the block runs; yields the index URL.

    A local lakehouse is served from its folder (new validations show at once); an object
    store's site is copied to a temporary folder first (restart to see newer pages).

    Raises:
        FileNotFoundError: the data docs have not been built (no caption check ran yet).
    """
    if data_docs_index(lakehouse) is None:
        raise FileNotFoundError(
            f"no data docs at {lakehouse.location(DATA_DOCS)}: materialize caption_quality "
            "with its checks for a slide first"
        )
    scratch = None
    if lakehouse.is_object_store:
        scratch = Path(tempfile.mkdtemp(prefix="pathgen-data-docs-"))
        lakehouse.storage.download_tree(DATA_DOCS, scratch)
        folder = scratch
    else:
        folder = Path(lakehouse.location(DATA_DOCS))
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="pathgen-data-docs", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass
