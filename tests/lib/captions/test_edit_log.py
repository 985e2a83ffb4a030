"""Strict parsing of the revise agent's JSON answer."""

from __future__ import annotations

import json

import pytest

from pathgen_dagster.lib.captions.edit_log import (
    REVISION_JSON_SCHEMA,
    Edit,
    EditLogError,
    Revision,
    parse_revision,
)

DRAFT = "Sheets of small cells with scant stroma. Many mitoses are present."
VALID = {
    "revised": "Sheets of large cells with scant stroma. Glands are present.",
    "edits": [
        {"op": "modify", "span": "small", "replacement": "large", "reason": "nuclei enlarged"},
        {"op": "delete", "span": "Many mitoses are present.", "replacement": "", "reason": "no"},
        {"op": "add", "span": "", "replacement": "Glands are present.", "reason": "visible"},
    ],
}


def _edit(**changes: str) -> dict:
    return {"revised": "Text.", "edits": [VALID["edits"][0] | changes]}


def test_valid_revision() -> None:
    revision = parse_revision(json.dumps(VALID), draft=DRAFT)
    assert revision == Revision(
        revised=VALID["revised"],
        edits=(
            Edit("modify", "small", "large", "nuclei enlarged"),
            Edit("delete", "Many mitoses are present.", "", "no"),
            Edit("add", "", "Glands are present.", "visible"),
        ),
    )
    assert revision.edit_counts == {"modify": 1, "delete": 1, "add": 1}


def test_no_edits_when_the_draft_was_right() -> None:
    revision = parse_revision(json.dumps({"revised": DRAFT, "edits": []}), draft=DRAFT)
    assert revision.edits == () and revision.edit_counts == {"modify": 0, "delete": 0, "add": 0}


@pytest.mark.parametrize(
    "wrapped",
    [
        "```json\n{body}\n```",
        "```\n{body}\n```",
        "  \n```json\n{body}```\n",
        "\n{body}\n",
    ],
)
def test_one_fenced_block_or_surrounding_whitespace_is_tolerated(wrapped: str) -> None:
    text = wrapped.replace("{body}", json.dumps(VALID, indent=2))
    assert parse_revision(text).revised == VALID["revised"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The revised text is fine.", "does not start with a JSON object"),
        ("Here it is: " + json.dumps(VALID), "does not start with a JSON object"),
        (json.dumps(VALID) + "\nHope this helps!", "not valid JSON"),
        ("```json\n" + json.dumps(VALID) + "\n```\n```json\n{}\n```", "exactly one ```json"),
        ("```python\n" + json.dumps(VALID) + "\n```", "exactly one ```json"),
        ("```json\n" + json.dumps(VALID), "exactly one ```json"),
        ('{"revised": "x", "edits": [}', "not valid JSON"),
        ("[" + json.dumps(VALID) + "]", "does not start with a JSON object"),
        ('{"revised": "a", "revised": "b", "edits": []}', "duplicate keys"),
        (json.dumps({"edits": []}), r"missing keys \['revised'\]"),
        (json.dumps({"revised": "x"}), r"missing keys \['edits'\]"),
        (json.dumps(VALID | {"notes": "x"}), r"unexpected keys \['notes'\]"),
        (json.dumps({"revised": "  ", "edits": []}), "'revised' is empty"),
        (json.dumps({"revised": 3, "edits": []}), "'revised' must be a string"),
        (json.dumps({"revised": "x", "edits": {}}), "'edits' must be a list"),
        (json.dumps({"revised": "x", "edits": ["modify"]}), r"edits\[0\] must be an object"),
        (json.dumps(_edit(op="replace")), r"edits\[0\]\.op must be one of"),
        (json.dumps(_edit(op="Modify")), r"edits\[0\]\.op must be one of"),
        (json.dumps(_edit(reason="")), r"edits\[0\]\.reason is empty"),
        (json.dumps(_edit(span=None)), r"edits\[0\]\.span must be a string"),
        (json.dumps(_edit(replacement="small")), "modify replacement equals its span"),
        (json.dumps(_edit(replacement="")), "modify needs a non-empty span and replacement"),
        (json.dumps(_edit(op="delete")), "delete needs a non-empty span and an empty replacement"),
        (json.dumps(_edit(op="add")), "add needs an empty span and a non-empty replacement"),
    ],
)
def test_invalid_answers_name_the_reason(text: str, reason: str) -> None:
    with pytest.raises(EditLogError, match=reason):
        parse_revision(text)


def test_extra_and_missing_edit_keys() -> None:
    extra = {"revised": "x", "edits": [VALID["edits"][0] | {"confidence": "high"}]}
    with pytest.raises(EditLogError, match=r"edits\[0\]: unexpected keys \['confidence'\]"):
        parse_revision(json.dumps(extra))
    missing = {"revised": "x", "edits": [{"op": "add", "replacement": "y", "reason": "z"}]}
    with pytest.raises(EditLogError, match=r"edits\[0\]: missing keys \['span'\]"):
        parse_revision(json.dumps(missing))


def test_edits_are_checked_against_the_draft() -> None:
    with pytest.raises(EditLogError, match="span does not occur in the draft"):
        parse_revision(json.dumps(_edit(span="tiny")), draft=DRAFT)
    unlogged = {"revised": DRAFT + " Also fat.", "edits": []}
    with pytest.raises(EditLogError, match="differs from the draft but 'edits' is empty"):
        parse_revision(json.dumps(unlogged), draft=DRAFT)
    # Without the draft these are unknowable, and therefore accepted.
    assert parse_revision(json.dumps(unlogged)).revised == unlogged["revised"]


def test_schema_agrees_with_the_parser() -> None:
    assert REVISION_JSON_SCHEMA["required"] == ["revised", "edits"]
    item = REVISION_JSON_SCHEMA["properties"]["edits"]["items"]
    assert item["required"] == ["op", "span", "replacement", "reason"]
    assert item["properties"]["op"]["enum"] == ["modify", "delete", "add"]
