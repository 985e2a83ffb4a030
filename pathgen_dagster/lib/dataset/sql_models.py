"""SQL models: one SELECT per ``.sql`` file, its references, and the order to build them in.

A model file ``dbt_like_sql/<table>.sql`` builds the table ``<table>`` (declared in
``schemas.py``). Its SELECT names what it reads and what it depends on through placeholders
(see ``dbt_like_sql/README.md``)::

    {{ ref('captions') }}                  the captions table, pinned to one Delta version
    {{ version('captions') }}              that version, as an integer literal
    {{ partition_filter('c.slide_id') }}   c.slide_id = '<slide>' in a per-slide run,
                                           TRUE in a full rebuild
    {{ run_id }}                           the Dagster run id, as a string literal
    {{ config_hash }}                      sha256 (16 hex) of the model file, as a literal

This module is pure: it discovers, parses, orders and renders. Running the SQL and writing
the Delta table belong to the asset factory (``assets/sql_models.py``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pathgen_dagster.lib.schemas import TABLES, TableSpec

# The folder of model files: the repository's dbt_like_sql/ beside this package.
MODELS_DIR = Path(__file__).resolve().parents[3] / "dbt_like_sql"

PLACEHOLDER = re.compile(r"\{\{\s*(?P<name>[a-z_]+)\s*(?:\(\s*'(?P<argument>[^']*)'\s*\))?\s*\}\}")
# Functions take one quoted argument; values take none.
FUNCTIONS = frozenset({"ref", "version", "partition_filter"})
VALUES = frozenset({"run_id", "config_hash"})
# A column expression for partition_filter: an optionally qualified identifier.
COLUMN_EXPRESSION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class SqlModelError(ValueError):
    """A model file is malformed, refers to an unknown table, or models form a cycle."""


@dataclass(frozen=True)
class SqlModel:
    """One model file: the table it builds, its SQL template and what the SQL reads.

    Attributes:
        name: the table built, the file's stem, and the Dagster asset name.
        path: the ``.sql`` file.
        template: the file's text, placeholders unrendered.
        refs: tables read through ``ref``, in first-use order.
        versions: tables whose version the SQL records through ``version``.
        spec: the declared schema the result is checked against before it is written.
    """

    name: str
    path: Path
    template: str
    refs: tuple[str, ...]
    versions: tuple[str, ...]
    spec: TableSpec

    @property
    def partitioned(self) -> bool:
        """Per-slide model: one run rebuilds one slide's rows."""
        return "slide_id" in self.spec.partition_by

    @property
    def description(self) -> str:
        """The file's leading ``--`` comment lines, else the table's one-line doc."""
        lines = []
        for line in self.template.splitlines():
            stripped = line.strip()
            if not stripped.startswith("--"):
                break
            lines.append(stripped.removeprefix("--").strip())
        return "\n".join(lines).strip() or self.spec.doc

    @property
    def sql_hash(self) -> str:
        """sha256 (16 hex) of the file: the model's code version and config hash."""
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]


def parse(
    path: Path, *, specs: Mapping[str, TableSpec] = TABLES, text: str | None = None
) -> SqlModel:
    """The model in ``path``: refs and versions found, placeholders and schema checked."""
    name = path.stem
    template = path.read_text() if text is None else text
    where = f"SQL model {name!r} ({path})"
    if name not in specs:
        raise SqlModelError(
            f"{where}: no table {name!r} is declared; add a TableSpec named {name!r} to "
            "pathgen_dagster/lib/schemas.py (its columns are what the SELECT must return)"
        )
    spec = specs[name]
    body = _strip_comments(template).strip().rstrip(";").strip()
    if not re.match(r"(?is)^(select|with)\b", body):
        raise SqlModelError(f"{where}: the file must hold one SELECT (or WITH ... SELECT)")
    if ";" in _strip_strings(body):
        raise SqlModelError(f"{where}: one statement per file; remove the extra ';'")
    refs: list[str] = []
    versions: list[str] = []
    filters = 0
    for match in PLACEHOLDER.finditer(template):
        kind, argument = match["name"], match["argument"]
        if kind in FUNCTIONS and argument is None:
            raise SqlModelError(f"{where}: {match[0]} needs one quoted argument")
        if kind in VALUES and argument is not None:
            raise SqlModelError(f"{where}: {match[0]} takes no argument")
        if kind not in FUNCTIONS | VALUES:
            raise SqlModelError(
                f"{where}: unknown placeholder {match[0]}; known: {sorted(FUNCTIONS | VALUES)}"
            )
        if kind in ("ref", "version"):
            if argument not in specs:
                raise SqlModelError(f"{where}: {match[0]} names no declared table")
            if argument == name:
                raise SqlModelError(f"{where}: a model cannot read the table it builds")
            target = refs if kind == "ref" else versions
            if argument not in target:
                target.append(argument)
        if kind == "partition_filter":
            if not COLUMN_EXPRESSION.match(argument):
                raise SqlModelError(f"{where}: {match[0]} needs a column such as 'c.slide_id'")
            filters += 1
    leftover = PLACEHOLDER.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise SqlModelError(f"{where}: a '{{{{ ... }}}}' placeholder could not be parsed")
    if not refs:
        raise SqlModelError(f"{where}: reads no table; refer to inputs as {{{{ ref('name') }}}}")
    unread = sorted(set(versions) - set(refs))
    if unread:
        raise SqlModelError(f"{where}: version() of tables it does not ref(): {unread}")
    partitioned = "slide_id" in spec.partition_by
    if partitioned and not filters:
        raise SqlModelError(
            f"{where}: table {name!r} is partitioned by slide, so the SELECT must restrict "
            "what it reads with {{ partition_filter('<alias>.slide_id') }}"
        )
    if not partitioned and filters:
        raise SqlModelError(f"{where}: table {name!r} is not partitioned; remove partition_filter")
    return SqlModel(name, path, template, tuple(refs), tuple(versions), spec)


def discover(
    directory: Path = MODELS_DIR, *, specs: Mapping[str, TableSpec] = TABLES
) -> list[SqlModel]:
    """Every ``*.sql`` model under ``directory``, in dependency order."""
    if not directory.is_dir():
        raise SqlModelError(f"SQL model folder {directory} does not exist")
    models = [parse(path, specs=specs) for path in sorted(directory.glob("*.sql"))]
    return dependency_order(models)


def dependency_order(models: Iterable[SqlModel]) -> list[SqlModel]:
    """``models`` so that each comes after the models it refs (ties by name); or SqlModelError.

    Refs to tables no model builds (``captions``, ``patches`` ...) are sources written by
    Python assets: they order nothing here.
    """
    by_name = {model.name: model for model in models}
    ordered: list[SqlModel] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*chain[chain.index(name) :], name))
            raise SqlModelError(f"SQL models form a cycle: {cycle}")
        state[name] = "visiting"
        for ref in sorted(by_name[name].refs):
            if ref in by_name:
                visit(ref, (*chain, name))
        state[name] = "done"
        ordered.append(by_name[name])

    for name in sorted(by_name):
        visit(name, ())
    return ordered


def render(
    model: SqlModel,
    *,
    relations: Mapping[str, str],
    versions: Mapping[str, int | None],
    partition_key: str | None,
    run_id: str,
) -> str:
    """The model's SQL with every placeholder replaced.

    Args:
        model: the model.
        relations: table -> SQL relation to read it from, e.g.
            ``delta_scan('/lake/captions', version => 7)``; one per ref.
        versions: table -> the Delta version that relation is pinned to.
        partition_key: the slide to build in a per-slide run; None rebuilds every slide.
        run_id: the Dagster run id recorded on every row.
    """
    if partition_key is not None and not model.partitioned:
        raise SqlModelError(f"SQL model {model.name!r} is not partitioned; got a partition key")
    missing = [ref for ref in model.refs if ref not in relations]
    if missing:
        raise SqlModelError(f"SQL model {model.name!r}: no relation given for {missing}")

    def replace(match: re.Match[str]) -> str:
        kind, argument = match["name"], match["argument"]
        if kind == "ref":
            return relations[argument]
        if kind == "version":
            version = versions.get(argument)
            return "CAST(NULL AS BIGINT)" if version is None else f"CAST({int(version)} AS BIGINT)"
        if kind == "partition_filter":
            return "TRUE" if partition_key is None else f"{argument} = {quote(partition_key)}"
        if kind == "run_id":
            return quote(run_id)
        return quote(model.sql_hash)

    return PLACEHOLDER.sub(replace, model.template).strip().rstrip(";")


def quote(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _strip_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"--[^\n]*", " ", sql)


def _strip_strings(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)
