"""Agent prompt templates: rendering, strict values, and hash stability."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pathgen_dagster.lib.captions.agent_prompts import (
    DESCRIPTION_FACTS,
    DESCRIPTION_VISION,
    REVISE_FACTS,
    REVISE_VISION,
    SUMMARY,
    SUMMARY_RETRY,
    TEMPLATES,
    PromptError,
    PromptTemplate,
)
from pathgen_dagster.lib.captions.screening import screen_output

# Pinned on purpose: if one of these fails, a template's text changed. Bump its version
# (rows made with the old text must stay distinguishable) and update the hash here.
EXPECTED_HASHES = {
    "description.vision": "c2bd38dc8e10b7d6",
    "description.facts": "3e46498b2667dd03",
    "revise.vision": "97dd02700f730fa9",
    "revise.facts": "db99754e84623c36",
    "summary": "105b343db7fc94b0",
    "summary.retry": "0f8faf9ae620de88",
}

FACTS = "- tissue covers 80% of the patch\n- nuclei: crowded, enlarged"
JPEG = b"\xff\xd8\xff\xe0 a jpeg"


def test_templates_are_registered_by_id() -> None:
    assert set(TEMPLATES) == set(EXPECTED_HASHES)
    assert all(TEMPLATES[key].template_id == key for key in TEMPLATES)


@pytest.mark.parametrize("template_id", sorted(EXPECTED_HASHES))
def test_hash_is_pinned(template_id: str) -> None:
    template = TEMPLATES[template_id]
    assert template.template_hash == EXPECTED_HASHES[template_id], (
        f"{template_id} text changed: bump its version and update EXPECTED_HASHES"
    )


@pytest.mark.parametrize("field", ["template_id", "system", "user"])
def test_hash_changes_with_every_part(field: str) -> None:
    changed = dataclasses.replace(SUMMARY, **{field: getattr(SUMMARY, field) + " "})
    assert changed.template_hash != SUMMARY.template_hash
    assert dataclasses.replace(SUMMARY, version=2).template_hash != SUMMARY.template_hash


def test_hash_separates_its_parts() -> None:
    left = PromptTemplate("t", 1, system="ab", user="c")
    right = PromptTemplate("t", 1, system="a", user="bc")
    assert left.template_hash != right.template_hash
    assert len(left.template_hash) == 16 and int(left.template_hash, 16) >= 0


def test_fields_per_template() -> None:
    assert DESCRIPTION_VISION.fields == {"max_words"}
    assert DESCRIPTION_FACTS.fields == {"facts", "max_words"}
    assert REVISE_VISION.fields == {"draft"}
    assert REVISE_FACTS.fields == {"facts", "draft"}
    assert SUMMARY.fields == {"description", "max_words"}
    assert SUMMARY_RETRY.fields == {
        "description",
        "caption",
        "token_count",
        "token_limit",
        "max_words",
    }


def test_vision_description_sends_the_image_and_pathgen_rules() -> None:
    system, user = DESCRIPTION_VISION.render(image_jpeg=JPEG, max_words=120)
    assert system["role"] == "system" and user["role"] == "user"
    image, text = user["content"]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    instruction = text["text"]
    assert "morphology of the cells and tissue first" in instruction
    assert "visible in the image" in instruction
    assert "auxiliary text" in instruction and "more information" in instruction
    assert "unrelated" in instruction and "at most 120 words" in instruction


def test_facts_description_embeds_the_facts_as_plain_text() -> None:
    _, user = DESCRIPTION_FACTS.render(facts=FACTS, max_words=80)
    assert isinstance(user["content"], str)
    assert user["content"].startswith("MEASURED FACTS:\n" + FACTS)
    assert "stated in the measured facts" in user["content"]


def test_revise_prompt_shows_the_json_form() -> None:
    _, user = REVISE_FACTS.render(facts=FACTS, draft="A draft.")
    form = user["content"].rsplit("\n", 1)[1]
    parsed = json.loads(form)
    assert set(parsed) == {"revised", "edits"}
    assert set(parsed["edits"][0]) == {"op", "span", "replacement", "reason"}
    for op in ("modify", "delete", "add"):
        assert f'"{op}"' in user["content"]


def test_summary_retry_states_the_measured_length() -> None:
    _, user = SUMMARY_RETRY.render(
        description="Long text.", caption="Too long.", token_count=91, token_limit=77, max_words=40
    )
    assert "91 CLIP tokens" in user["content"] and "limit of 77 tokens" in user["content"]
    assert "at most 40 words" in user["content"]


def test_render_refuses_missing_and_unexpected_values() -> None:
    with pytest.raises(PromptError, match=r"missing values \['max_words'\]"):
        DESCRIPTION_FACTS.render(facts=FACTS)
    with pytest.raises(PromptError, match=r"unexpected values \['seed'\]"):
        DESCRIPTION_FACTS.render(facts=FACTS, max_words=80, seed=3)


def test_render_refuses_a_wrong_image_input() -> None:
    with pytest.raises(PromptError, match="needs image_jpeg"):
        REVISE_VISION.render(draft="A draft.")
    with pytest.raises(PromptError, match="takes no image_jpeg"):
        SUMMARY.render(image_jpeg=JPEG, description="d", max_words=40)


def test_few_shot_example_phrases_are_only_in_the_example() -> None:
    example = DESCRIPTION_FACTS.system.lower()
    for phrase in DESCRIPTION_FACTS.example_phrases:
        assert phrase in example
        assert phrase not in DESCRIPTION_FACTS.user.lower()
    copied = "Loose tissue occupies about a third of the patch, with crowded nuclei."
    reason = screen_output(copied, "stop", example_phrases=DESCRIPTION_FACTS.example_phrases)
    assert reason is not None and reason.startswith("copied_example")
