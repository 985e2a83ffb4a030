"""Strict parsing of the revise agent's answer: the corrected text and its log of edits.

The revise agent answers ``{"revised": str, "edits": [{"op", "span", "replacement",
"reason"}]}`` (see :mod:`pathgen_dagster.lib.captions.agent_prompts`). Anything else is rejected with
the precise reason, so a malformed answer is recorded as such instead of being half-used.
The only leniency is one Markdown ```json fence around the object, which models add often.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, get_args

EditOp = Literal["modify", "delete", "add"]
EDIT_OPS: tuple[str, ...] = get_args(EditOp)
EDIT_KEYS = ("op", "span", "replacement", "reason")
REVISION_KEYS = ("revised", "edits")

_FENCED = re.compile(r"\A```(?:json)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```\Z", re.DOTALL)

REVISION_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "revised": {"type": "string", "minLength": 1},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": list(EDIT_OPS)},
                    "span": {"type": "string"},
                    "replacement": {"type": "string"},
                    "reason": {"type": "string", "minLength": 1},
                },
                "required": list(EDIT_KEYS),
                "additionalProperties": False,
            },
        },
    },
    "required": list(REVISION_KEYS),
    "additionalProperties": False,
}
"""JSON schema of a revision (the per-op rules of :func:`parse_revision` go beyond it)."""

REVISION_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "revision", "strict": True, "schema": REVISION_JSON_SCHEMA},
}
"""``response_format`` that makes vLLM and llama.cpp decode only schema-valid JSON."""


class EditLogError(ValueError):
    """The revise agent's answer is not a valid revision; the message says exactly why."""


@dataclass(frozen=True)
class Edit:
    """One correction the revise agent made to the draft.

    Attributes:
        op: "modify" (wrong feature), "delete" (unsupported feature) or "add" (missing one).
        span: the draft text changed or removed ("" for add).
        replacement: the new text ("" for delete).
        reason: why the edit was made.
    """

    op: EditOp
    span: str
    replacement: str
    reason: str


@dataclass(frozen=True)
class Revision:
    """The revised description and the edits that turned the draft into it."""

    revised: str
    edits: tuple[Edit, ...]

    @property
    def edit_counts(self) -> dict[str, int]:
        """Number of edits of each op, every op present (zeros included)."""
        counts = Counter(edit.op for edit in self.edits)
        return {op: counts[op] for op in EDIT_OPS}


def parse_revision(text: str, *, draft: str | None = None) -> Revision:
    """The revision encoded in the revise agent's answer ``text``.

    Args:
        text: the model output: one JSON object, optionally inside a single ```json fence.
        draft: the draft that was revised; when given, spans of modify and delete edits
            must occur in it, and a revised text that differs from it must come with edits.

    Raises:
        EditLogError: not JSON, not one object, missing or extra keys, wrong types, unknown
            op, empty revised text or reason, or an edit inconsistent with its op or draft.
    """
    obj = _load_object(text)
    _check_keys(obj, REVISION_KEYS, "answer")
    revised = obj["revised"]
    if not isinstance(revised, str):
        raise EditLogError(f"'revised' must be a string, got {type(revised).__name__}")
    if not revised.strip():
        raise EditLogError("'revised' is empty")
    raw_edits = obj["edits"]
    if not isinstance(raw_edits, list):
        raise EditLogError(f"'edits' must be a list, got {type(raw_edits).__name__}")
    edits = tuple(_parse_edit(raw, f"edits[{index}]") for index, raw in enumerate(raw_edits))
    if draft is not None:
        _check_against_draft(revised, edits, draft)
    return Revision(revised=revised, edits=edits)


def _load_object(text: str) -> dict[str, Any]:
    """The single JSON object in ``text`` (bare, or in one fenced block)."""
    body = text.strip()
    if body.startswith("```"):
        fenced = _FENCED.match(body)
        if fenced is None or "```" in fenced.group("body"):
            raise EditLogError("answer has a code fence but is not exactly one ```json block")
        body = fenced.group("body").strip()
    if not body.startswith("{"):
        raise EditLogError(f"answer does not start with a JSON object: {body[:60]!r}")
    try:
        obj = json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as error:
        raise EditLogError(f"answer is not valid JSON: {error}") from error
    if not isinstance(obj, dict):
        raise EditLogError(f"answer must be a JSON object, got {type(obj).__name__}")
    return obj


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A dict of ``pairs``; a repeated key would silently drop one value, so it is refused."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise EditLogError(f"duplicate keys {repeated}")
    return dict(pairs)


def _check_keys(obj: dict[str, Any], expected: tuple[str, ...], where: str) -> None:
    """Raises EditLogError unless ``obj`` has exactly the ``expected`` keys."""
    missing = [key for key in expected if key not in obj]
    extra = sorted(key for key in obj if key not in expected)
    if missing:
        raise EditLogError(f"{where}: missing keys {missing}")
    if extra:
        raise EditLogError(f"{where}: unexpected keys {extra}")


def _parse_edit(raw: Any, where: str) -> Edit:
    """One Edit from its JSON object, checked against the rules of its op."""
    if not isinstance(raw, dict):
        raise EditLogError(f"{where} must be an object, got {type(raw).__name__}")
    _check_keys(raw, EDIT_KEYS, where)
    for key in EDIT_KEYS:
        if not isinstance(raw[key], str):
            raise EditLogError(f"{where}.{key} must be a string, got {type(raw[key]).__name__}")
    op, span, replacement, reason = (raw[key] for key in EDIT_KEYS)
    if op not in EDIT_OPS:
        raise EditLogError(f"{where}.op must be one of {list(EDIT_OPS)}, got {op!r}")
    if not reason.strip():
        raise EditLogError(f"{where}.reason is empty")
    has_span, has_replacement = bool(span.strip()), bool(replacement.strip())
    if op == "modify" and not (has_span and has_replacement):
        raise EditLogError(f"{where}: modify needs a non-empty span and replacement")
    if op == "modify" and span.strip() == replacement.strip():
        raise EditLogError(f"{where}: modify replacement equals its span")
    if op == "delete" and not (has_span and not replacement):
        raise EditLogError(f"{where}: delete needs a non-empty span and an empty replacement")
    if op == "add" and not (has_replacement and not span):
        raise EditLogError(f"{where}: add needs an empty span and a non-empty replacement")
    return Edit(op=op, span=span, replacement=replacement, reason=reason)


def _check_against_draft(revised: str, edits: tuple[Edit, ...], draft: str) -> None:
    """Raises EditLogError when the edits cannot have been made to ``draft``."""
    for index, edit in enumerate(edits):
        if edit.op != "add" and edit.span not in draft:
            raise EditLogError(f"edits[{index}].span does not occur in the draft: {edit.span!r}")
    if not edits and revised.strip() != draft.strip():
        raise EditLogError("'revised' differs from the draft but 'edits' is empty")
