"""Attribute prompts per tissue site and per-slide report findings, the texts tiles rank by.

The packaged library (``data/attribute_prompts.yaml``) holds about 20 short morphology
statements per common TCGA study, plus a ``generic`` set for slides of an unknown site.
Report findings are optional and come from a file the user provides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import polars as pl
import yaml

GENERIC = "generic"
PROMPTS_PACKAGE = "pathgen_dagster.lib.selection"
PROMPTS_RESOURCE = ("data", "attribute_prompts.yaml")
REPORT_COLUMNS = ("slide_id", "finding")

_SEPARATORS = re.compile(r"[\s_\-]+")


@dataclass(frozen=True)
class Site:
    """One tissue site: TCGA code, display name, aliases and its attribute prompts."""

    code: str
    name: str
    aliases: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class PromptLibrary:
    """Attribute prompts of every site, the library version and where it was read from."""

    sites: dict[str, Site]
    version: str
    source: str
    _lookup: dict[str, str] = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptLibrary:
        """Returns the library read from ``path``, or the packaged one when ``path`` is None.

        Raises:
            ValueError: the file is not a valid library; the message names the file and
                what is wrong.
        """
        if path is None:
            resource = resources.files(PROMPTS_PACKAGE).joinpath(*PROMPTS_RESOURCE)
            raw, source = resource.read_bytes(), str(resource)
        else:
            raw, source = Path(path).read_bytes(), str(path)
        sites = _parse_sites(raw, source)
        lookup: dict[str, str] = {}
        for site in sites.values():
            for alias in (site.code, site.name, *site.aliases):
                key = _normalise(alias)
                if lookup.setdefault(key, site.code) != site.code:
                    raise ValueError(
                        f"{source}: alias {alias!r} names both {lookup[key]} and {site.code}"
                    )
        version = hashlib.sha256(raw).hexdigest()[:12]
        return cls(sites=sites, version=version, source=source, _lookup=lookup)

    def resolve(self, site: str | None) -> Site:
        """Returns the site that ``site`` names (code, name or alias), else the generic set.

        Matching ignores case, runs of spaces, ``_`` and ``-``, and a ``TCGA-`` prefix, so
        ``"TCGA-LUAD"``, ``"luad"`` and ``"Lung adenocarcinoma"`` all give LUAD.
        """
        if site is None:
            return self.sites[GENERIC]
        key = _normalise(site)
        code = self._lookup.get(key) or self._lookup.get(key.removeprefix("tcga "))
        return self.sites[code or GENERIC]

    def prompts_for(self, site: str | None) -> list[str]:
        """Returns the attribute prompts of ``site``; unknown or None sites get the generic set."""
        return list(self.resolve(site).prompts)


def _normalise(name: str) -> str:
    return _SEPARATORS.sub(" ", name.strip().lower()).strip()


def _parse_sites(raw: bytes, source: str) -> dict[str, Site]:
    """Returns the sites of a library file keyed by code, in file order."""
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {error}") from error
    entries = document.get("sites") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a top-level 'sites' list with at least one site")
    sites: dict[str, Site] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{source}: site #{number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a mapping")
        code, name = entry.get("code"), entry.get("name")
        if not (_is_text(code) and _is_text(name)):
            raise ValueError(f"{where} needs a non-empty 'code' and 'name'")
        aliases, prompts = entry.get("aliases") or [], entry.get("prompts")
        if not isinstance(aliases, list) or not all(_is_text(a) for a in aliases):
            raise ValueError(f"{where} ({code}): 'aliases' must be a list of non-empty strings")
        if not isinstance(prompts, list) or not prompts or not all(_is_text(p) for p in prompts):
            raise ValueError(f"{where} ({code}): 'prompts' must be a non-empty list of strings")
        if len(set(prompts)) != len(prompts):
            raise ValueError(f"{where} ({code}): 'prompts' holds the same statement twice")
        if code in sites:
            raise ValueError(f"{where}: code {code!r} appears twice")
        sites[code] = Site(
            code=code,
            name=name.strip(),
            aliases=tuple(a.strip() for a in aliases),
            prompts=tuple(p.strip() for p in prompts),
        )
    if GENERIC not in sites:
        raise ValueError(f"{source}: no {GENERIC!r} site, which unknown sites fall back to")
    return sites


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def load_report_findings(path: str | Path | None) -> dict[str, list[str]]:
    """Returns the pathology report findings of each slide, read from a user's file.

    The file (``.csv``, ``.json`` array of records, ``.jsonl``/``.ndjson`` or ``.parquet``)
    has one row per finding with columns ``slide_id`` and ``finding``; other columns are
    ignored. Findings keep file order; a finding repeated for a slide is kept once, because
    report scores sum over findings and a repeat would count twice.

    Args:
        path: the findings file; None or a path that does not exist gives no findings,
            since reports are optional.

    Raises:
        ValueError: the file cannot be read, lacks a column, or has an empty value; the
            message names the file and the row.
    """
    if path is None or not Path(path).exists():
        return {}
    path = Path(path)
    readers = {
        ".csv": lambda: pl.read_csv(path, infer_schema=False),
        ".json": lambda: pl.read_json(path),
        ".jsonl": lambda: pl.read_ndjson(path),
        ".ndjson": lambda: pl.read_ndjson(path),
        ".parquet": lambda: pl.read_parquet(path),
        ".pq": lambda: pl.read_parquet(path),
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(
            f"report findings file {path}: unsupported suffix {path.suffix!r}; "
            f"use one of {', '.join(readers)}"
        )
    try:
        table = reader()
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        raise ValueError(f"report findings file {path}: cannot be read: {error}") from error
    missing = [c for c in REPORT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"report findings file {path}: missing column(s) {missing}; "
            f"found {table.columns}, need {list(REPORT_COLUMNS)}"
        )
    try:
        table = table.select(pl.col(list(REPORT_COLUMNS)).cast(pl.String).str.strip_chars())
    except pl.exceptions.PolarsError as error:
        raise ValueError(
            f"report findings file {path}: 'slide_id' and 'finding' must be text: {error}"
        ) from error
    findings: dict[str, list[str]] = {}
    # Row numbers count data rows from 1, as a person reading the file would.
    for row, (slide_id, finding) in enumerate(table.iter_rows(), start=1):
        if not slide_id or not finding:
            raise ValueError(
                f"report findings file {path}: row {row} has an empty slide_id or finding"
            )
        slide_findings = findings.setdefault(slide_id, [])
        if finding not in slide_findings:
            slide_findings.append(finding)
    return findings
