"""What the Dagster UI shows for a materialization: counts, previews, pictures, timings."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image

from pathgen_dagster.lib.schemas import TableSpec


def config_hash(config: dg.Config | dict) -> str:
    """sha256 (16 hex) of a stage config, recorded on every row it produced."""
    values = config if isinstance(config, dict) else config.model_dump()
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def column_schema(spec: TableSpec) -> dg.TableSchema:
    """The table's columns as Dagster shows them on the asset page."""
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, str(c.type), description=c.doc) for c in spec.columns]
    )


PREVIEW_CELL_CHARS = 160


def shorten(text: str, limit: int = PREVIEW_CELL_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    # A single over-long word (an id, a hash) is cut where it must be.
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:.") + "…"


def preview(frame: pl.DataFrame, columns: list[str], rows: int = 10) -> dg.MetadataValue:
    """A markdown table of the first ``rows`` rows of ``columns`` (long text cut at a word)."""
    head = frame.select(columns).head(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in head.iter_rows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append(
            "| " + " | ".join(shorten(cell.replace("|", "/").replace("\n", " ")) for cell in cells) + " |"
        )
    return dg.MetadataValue.md("\n".join(lines))


def picture(
    image: np.ndarray, store: Callable[[str, bytes], str], relative: str, title: str
) -> dict[str, dg.MetadataValue]:
    """Save ``image`` as PNG through ``store`` (e.g. ``Lakehouse.put_artifact``) at
    ``relative`` and return metadata that shows it inline and says where it lies."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    location = store(relative, buffer.getvalue())
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return {
        title: dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})"),
        f"{title} file": dg.MetadataValue.path(location),
    }
