"""Versioned prompt templates of the three caption agents: description, revise, summary.

Each agent has a vision variant (the patch image goes to a vision-language model, as in
PathGen) and a text-grounded variant (a block of MEASURED FACTS about the patch goes to a text
model, which is what runs on a laptop). Every output row records ``template_hash``, which
changes whenever a template's words change, so captions from different prompts are never
mixed up silently. Change a template's text only together with its ``version``.

Templates are ``str.format`` strings: literal braces are doubled.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

from pathgen_dagster.lib.captions.llm import Message, system_message, user_message


class PromptError(ValueError):
    """A template was rendered with missing or unexpected values, or the wrong image input."""


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned chat prompt: a system text and a user text with ``{placeholders}``.

    Attributes:
        template_id: stable name, e.g. ``"description.facts"``.
        version: bumped whenever ``system`` or ``user`` changes.
        system: the system message (few-shot examples live here, so the hash covers them).
        user: the user message template.
        needs_image: True for vision variants, which send the patch as a JPEG image part.
        example_phrases: phrases that occur only in the few-shot example; an output that
            contains one copied the example instead of describing its own patch (see
            :func:`pathgen_dagster.lib.captions.screening.screen_output`).
    """

    template_id: str
    version: int
    system: str
    user: str
    needs_image: bool = False
    example_phrases: tuple[str, ...] = ()

    @property
    def template_hash(self) -> str:
        """First 16 hex digits of sha256 over id, version, system and user text."""
        # The unit separator keeps ("ab", "c") and ("a", "bc") from hashing alike.
        text = "\x1f".join((self.template_id, str(self.version), self.system, self.user))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def fields(self) -> frozenset[str]:
        """Names of the placeholders ``render`` needs."""
        parsed = string.Formatter().parse(self.system + self.user)
        return frozenset(name for _, name, _, _ in parsed if name)

    def render(self, *, image_jpeg: bytes | None = None, **values: object) -> list[Message]:
        """The chat messages for one request: system, then user (with the image, if any).

        Args:
            image_jpeg: the patch as JPEG bytes; required by vision variants, refused by
                text variants (a text model would silently ignore it).
            **values: one value per placeholder, no more and no fewer.

        Raises:
            PromptError: a placeholder value is missing or unexpected, or the image input
                does not match ``needs_image``.
        """
        missing = sorted(self.fields - values.keys())
        extra = sorted(values.keys() - self.fields)
        if missing or extra:
            raise PromptError(
                f"template {self.template_id!r} v{self.version}: missing values {missing}, "
                f"unexpected values {extra}"
            )
        if self.needs_image != (image_jpeg is not None):
            need = "needs" if self.needs_image else "takes no"
            raise PromptError(f"template {self.template_id!r} {need} image_jpeg")
        return [
            system_message(self.system.format(**values)),
            user_message(self.user.format(**values), image_jpeg),
        ]


_DESCRIPTION_RULES = """\
Describe the morphology of the cells and tissue first{first}, then {rest}.
Mention only features that are {grounding}.
Do not mention any auxiliary text, facts list or source of information.
Do not ask for more information. Do not add anything unrelated to the patch.
Write one paragraph of plain English prose, at most {max_words} words: no headings, no lists."""

DESCRIPTION_VISION = PromptTemplate(
    template_id="description.vision",
    version=1,
    system=(
        "You are an expert pathologist describing one H&E-stained histopathology image patch "
        "for a caption dataset."
    ),
    user="Describe this histopathology image patch.\n"
    + _DESCRIPTION_RULES.replace("{first}", " (cell types, nuclei, cytoplasm, architecture)")
    .replace("{rest}", "other visible features such as stroma, glands, vessels or necrosis")
    .replace("{grounding}", "visible in the image"),
    needs_image=True,
)

# The example uses facts a real patch will rarely share; copying its sentences is detected
# through example_phrases, because small models (SmolLM2) tend to copy few-shot answers.
DESCRIPTION_FACTS = PromptTemplate(
    template_id="description.facts",
    version=1,
    system=(
        "You are an expert pathologist. You describe an H&E-stained histopathology patch "
        "using only the measurements you are given, in plain prose.\n\n"
        "Example (a different patch; never reuse its content):\n"
        "MEASURED FACTS:\n"
        "- tissue covers 35% of the patch\n"
        "- adipocytes: large empty round spaces, 60% of the tissue\n"
        "- nuclei: sparse, small, dark, 40 per 0.1 mm2\n"
        "DESCRIPTION: Loose tissue occupies about a third of the patch, dominated by large "
        "empty adipocytes. Scattered small dark nuclei lie between them."
    ),
    user="MEASURED FACTS:\n{facts}\n\n"
    # No feature checklist here: a text model would fill it in with invented findings.
    + _DESCRIPTION_RULES.replace("{first}", "")
    .replace("{rest}", "the other facts")
    .replace("{grounding}", "stated in the measured facts")
    + "\nDo not add numbers, features or diagnoses that are not in the facts.\nDESCRIPTION:",
    example_phrases=(
        "about a third of the patch",
        "dominated by large empty adipocytes",
        "scattered small dark nuclei lie between them",
    ),
)

_REVISE_RULES = """\
Check every statement of the draft against {evidence}. Correct it with three kinds of edit:
- "modify": a feature is described wrongly; "span" is the draft text, "replacement" the fix.
- "delete": a feature is not supported; "span" is the draft text, "replacement" is "".
- "add": a supported feature is missing; "span" is "", "replacement" is the new text.
Every edit has a short "reason". Keep correct sentences unchanged. If nothing is wrong, \
return the draft unchanged with an empty edits list.
Answer with one JSON object and nothing else, in exactly this form:
{{"revised": "<the corrected description>", "edits": [{{"op": "modify", "span": "<draft \
text>", "replacement": "<new text>", "reason": "<why>"}}]}}"""

REVISE_VISION = PromptTemplate(
    template_id="revise.vision",
    version=1,
    system=(
        "You are an expert pathologist who reviews descriptions of H&E-stained "
        "histopathology image patches and corrects them against the image."
    ),
    user="DRAFT DESCRIPTION:\n{draft}\n\n"
    + _REVISE_RULES.replace("{evidence}", "what is visible in the image"),
    needs_image=True,
)

REVISE_FACTS = PromptTemplate(
    template_id="revise.facts",
    version=1,
    system=(
        "You are an expert pathologist who reviews descriptions of H&E-stained "
        "histopathology patches and corrects them against measured facts."
    ),
    user="MEASURED FACTS:\n{facts}\n\nDRAFT DESCRIPTION:\n{draft}\n\n"
    + _REVISE_RULES.replace("{evidence}", "the measured facts"),
)

_SUMMARY_RULES = """\
Write one caption of at most {max_words} words for this histopathology patch: the most \
important cell and tissue features, in plain English prose. Use only what the description \
says. No preamble, no quotation marks, no lists, no questions."""

SUMMARY = PromptTemplate(
    template_id="summary",
    version=1,
    system="You condense histopathology descriptions into short, accurate image captions.",
    user="DESCRIPTION:\n{description}\n\n" + _SUMMARY_RULES + "\nCAPTION:",
)

SUMMARY_RETRY = PromptTemplate(
    template_id="summary.retry",
    version=1,
    system="You condense histopathology descriptions into short, accurate image captions.",
    user=(
        "DESCRIPTION:\n{description}\n\nPREVIOUS CAPTION:\n{caption}\n\n"
        "The previous caption is {token_count} CLIP tokens long, over the limit of "
        "{token_limit} tokens, so CLIP would cut it off. Write a shorter caption.\n"
        + _SUMMARY_RULES
        + "\nCAPTION:"
    ),
)

TEMPLATES: dict[str, PromptTemplate] = {
    template.template_id: template
    for template in (
        DESCRIPTION_VISION,
        DESCRIPTION_FACTS,
        REVISE_VISION,
        REVISE_FACTS,
        SUMMARY,
        SUMMARY_RETRY,
    )
}
"""Every agent template by ``template_id``."""
