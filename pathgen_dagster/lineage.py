"""Where a training pair came from: slide file -> tile -> patch -> description -> revision ->
caption -> checks, read from the Delta tables at the versions the pair was built from.

``training_pairs`` records, per row, the Delta version of every table its SQL read; the
trace reads each stage's row with time travel at that version, so it shows what the pair was
really built from even after later re-runs. ``tiles`` is not read by the SQL model and is
shown at its current version (a vacuumed old version falls back the same way, and says so).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from pathgen_dagster.lib.dataset.sql_models import quote
from pathgen_dagster.lib.schemas import TABLES
from pathgen_dagster.resources.lakehouse import Lakehouse

# patch ids are tile ids, "<slide_id>_x<x>_y<y>_s<size>": the slide id prunes the lookup.
PAIR_ID = re.compile(r"^(?P<slide_id>.+)_x\d+_y\d+_s\d+$")
# Columns too large or too raw to print.
HIDDEN = frozenset({"image_jpeg", "embedding"})


class PairNotFound(LookupError):
    """No row of training_pairs has this pair id."""


@dataclass(frozen=True)
class LineageStep:
    """One link of the chain: a stage, the table row behind it and the version read."""

    stage: str
    table: str
    version: int | None
    row: dict[str, Any] | None
    fields: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Lineage:
    """A pair's training_pairs row and the chain of stage rows it was built from."""

    pair_id: str
    pair: dict[str, Any]
    training_pairs_version: int
    steps: list[LineageStep] = field(default_factory=list)


@dataclass(frozen=True)
class Link:
    """How to find a stage's row: its table, the pair column holding the version it was
    built from (None: not read by the SQL model, shown at the current version), the key
    column (looked up with the pair's value of the same name; tile_id with its patch_id),
    and the fields worth printing."""

    stage: str
    table: str
    version_column: str | None
    key: str
    fields: str

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields.split())


AGENT_FIELDS = "backend model_id template_id template_hash sampling_json status failure_reason"
RUN_FIELDS = "run_id config_hash upstream_version"
CHAIN = (
    Link(
        "slide file",
        "slides",
        "slides_version",
        "slide_id",
        "uri file_name sha256 file_size vendor width height mpp_x objective_power "
        "tissue_site registered_at run_id",
    ),
    Link(
        "tile",
        "tiles",
        None,
        "tile_id",
        f"tile_id x y level size_px mpp tissue_fraction blur_variance mean_saturation {RUN_FIELDS}",
    ),
    Link(
        "patch",
        "patches",
        "patches_version",
        "patch_id",
        "patch_id reasons attribute_score report_score top_prompt cluster_id k tissue_site "
        "encoder_id text_encoder_id prompt_library_version selection_config image_sha256 "
        f"{RUN_FIELDS}",
    ),
    Link(
        "description",
        "descriptions",
        "descriptions_version",
        "patch_id",
        f"{AGENT_FIELDS} description {RUN_FIELDS}",
    ),
    Link(
        "revision",
        "revised_descriptions",
        "revised_descriptions_version",
        "patch_id",
        f"{AGENT_FIELDS} n_edits edits_json revised {RUN_FIELDS}",
    ),
    Link(
        "caption",
        "captions",
        "captions_version",
        "patch_id",
        f"{AGENT_FIELDS} caption clip_tokens fits_clip {RUN_FIELDS}",
    ),
    Link(
        "checks",
        "caption_quality",
        "caption_quality_version",
        "patch_id",
        "passed quality_score failed_rules rule_results_json alignment_score "
        "unsupported_claims contradictions max_duplicate_similarity duplicate_of "
        f"ruleset_version {RUN_FIELDS}",
    ),
)


def trace(lakehouse: Lakehouse, pair_id: str) -> Lineage:
    """The lineage of ``pair_id``, read from the lakehouse's tables."""
    pairs_version = lakehouse.version("training_pairs")
    if pairs_version is None:
        raise PairNotFound("training_pairs has never been built; materialize it first")
    with lakehouse.connect(views=False) as connection:
        pair = find_pair(connection, lakehouse.uri("training_pairs"), pairs_version, pair_id)
        steps = []
        for link in CHAIN:
            pinned = pair[link.version_column] if link.version_column else None
            value = pair["patch_id"] if link.key == "tile_id" else pair[link.key]
            row, version, note = _stage_row(
                connection, lakehouse, link.table, pinned, pair["slide_id"], link.key, value
            )
            steps.append(LineageStep(link.stage, link.table, version, row, link.field_names, note))
    return Lineage(pair_id, pair, pairs_version, steps)


def find_pair(
    connection: duckdb.DuckDBPyConnection, uri: str, version: int, pair_id: str
) -> dict[str, Any]:
    """The training_pairs row of ``pair_id``: one slide's files when the id names its slide."""
    relation = f"delta_scan({quote(uri)}, version => {version})"
    hint = PAIR_ID.match(pair_id)
    queries = []
    if hint:
        queries.append(
            f"SELECT * FROM {relation} WHERE slide_id = {quote(hint['slide_id'])} "
            "AND pair_id = $pair_id"
        )
    queries.append(f"SELECT * FROM {relation} WHERE pair_id = $pair_id")
    for query in queries:
        rows = connection.execute(query, {"pair_id": pair_id}).to_arrow_table().to_pylist()
        if rows:
            return rows[0]
    raise PairNotFound(
        f"no pair {pair_id!r} in training_pairs v{version}; it may have failed quality "
        "(see quarantine_report) or its slide has not been built"
    )


def _stage_row(
    connection: duckdb.DuckDBPyConnection,
    lakehouse: Lakehouse,
    table: str,
    version: int | None,
    slide_id: str,
    key: str,
    value: str,
) -> tuple[dict[str, Any] | None, int | None, str]:
    uri = lakehouse.uri(table)
    note = ""
    if version is None:
        # Not read by the SQL model: today's version. (Asking for the current version loads
        # the Delta log in Python: done only where no pinned version exists.)
        version = lakehouse.version(table)
        if version is None:
            return None, None, "table never written"
        note = "current version"
    try:
        row = _read_row(connection, uri, version, slide_id, key, value, table=table)
    except duckdb.Error:
        current = lakehouse.version(table)
        if current is None:
            return None, None, f"table gone since v{version} was read"
        if current == version:
            raise
        # Time travel fails once vacuum removed the old files: show today's row, flagged.
        note = f"v{version} no longer readable (vacuumed?); showing current v{current}"
        version = current
        row = _read_row(connection, uri, version, slide_id, key, value, table=table)
    if row is None:
        note = (note + "; " if note else "") + "row not found"
    return row, version, note


def _read_row(
    connection: duckdb.DuckDBPyConnection,
    uri: str,
    version: int,
    slide_id: str,
    key: str,
    value: str,
    *,
    table: str,
) -> dict[str, Any] | None:
    relation = f"delta_scan({quote(uri)}, version => {version})"
    where = f'WHERE slide_id = {quote(slide_id)} AND "{key}" = $value'
    # Columns to leave out come from the declared schema: asking DuckDB (DESCRIBE) would
    # replay the Delta log a second time, the slow part on a table of thousands of files.
    spec = TABLES.get(table)
    hidden = [name for name in (spec.column_names if spec else ()) if name in HIDDEN]
    select = f"* EXCLUDE ({', '.join(hidden)})" if hidden else "*"
    result = connection.execute(f"SELECT {select} FROM {relation} {where}", {"value": value})
    rows = result.to_arrow_table().to_pylist()
    return rows[0] if rows else None


def format_lineage(lineage: Lineage, *, width: int = 100) -> str:
    """The chain as text: one block per stage, the fields that say how the row was made."""
    pair = lineage.pair
    lines = [
        f"pair {lineage.pair_id}",
        f"  training_pairs v{lineage.training_pairs_version}, built by run {pair['run_id']} "
        f"(sql {pair['config_hash']})",
        f"  slide {pair['slide_id']} at ({pair['x']}, {pair['y']}) level {pair['level']}, "
        f"{pair['size_px']} px, mpp {pair['mpp']}",
        f"  caption: {_short(pair['caption'], width * 3)}",
    ]
    for number, step in enumerate(lineage.steps, start=1):
        version = f"v{step.version}" if step.version is not None else "-"
        note = f"  ({step.note})" if step.note else ""
        lines.append("")
        lines.append(f"{number}. {step.stage:<12} {step.table} {version}{note}")
        if step.row is None:
            continue
        for name in step.fields:
            if name in step.row:
                lines.append(f"     {name:<24} {_short(_text(step.row[name]), width)}")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return "-" if value is None else str(value)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- instructions (PathGen-Instruct) -------------------------------------------------------

INSTRUCTION_ID = re.compile(r"^(?P<pair_id>.+)_(?:conv|mc)\d+$")
INSTRUCTION_FIELDS = (
    "instruction_id kind status failed_rules failure_reasons answer_letter grounding "
    "question_template_ids backend model_id template_id template_hash sampling_json "
    "generation_status generation_failure ruleset_version training_pairs_version "
    f"{RUN_FIELDS}"
).split()


@dataclass(frozen=True)
class InstructionLineage:
    """An instruction's row, then the lineage of the pair it was built from."""

    instruction_id: str
    row: dict[str, Any]
    instructions_version: int
    pair: Lineage


def is_instruction_id(value: str) -> bool:
    """Whether ``value`` has the shape of an instruction id (``<pair_id>_conv0``, ``_mc1``)."""
    return INSTRUCTION_ID.match(value) is not None


def trace_instruction(lakehouse: Lakehouse, instruction_id: str) -> InstructionLineage:
    """The instruction row of ``instruction_id`` and its pair's lineage to the slide file."""
    version = lakehouse.version("instructions")
    if version is None:
        raise PairNotFound("instructions has never been built; materialize it first")
    match = INSTRUCTION_ID.match(instruction_id)
    if match is None:
        raise PairNotFound(f"{instruction_id!r} is not an instruction id (<pair_id>_conv<n>)")
    hint = PAIR_ID.match(match["pair_id"])
    with lakehouse.connect(views=False) as connection:
        row = _read_row(
            connection,
            lakehouse.uri("instructions"),
            version,
            hint["slide_id"] if hint else "",
            "instruction_id",
            instruction_id,
            table="instructions",
        )
    if row is None:
        raise PairNotFound(f"no instruction {instruction_id!r} in instructions v{version}")
    return InstructionLineage(instruction_id, row, version, trace(lakehouse, row["pair_id"]))


def format_instruction_lineage(lineage: InstructionLineage, *, width: int = 100) -> str:
    """The instruction's fields, then the pair's chain as :func:`format_lineage` prints it."""
    lines = [f"instruction {lineage.instruction_id}  (instructions v{lineage.instructions_version})"]
    lines += [
        f"     {name:<24} {_short(_text(lineage.row[name]), width)}"
        for name in INSTRUCTION_FIELDS
        if name in lineage.row
    ]
    return "\n".join([*lines, "", format_lineage(lineage.pair, width=width)])
