"""The three caption agents (description -> revision -> summary), model-agnostic and resumable.

An agent turns one patch (its measured morphology, optionally its image) into text. With
the ``grounded`` backend the text comes straight from the measurements (faithful by
construction). With a model backend the agent renders a versioned prompt, asks the model
through the OpenAI-compatible client, and verifies the answer: screening rules (empty,
truncated, refusal, repetition, off-topic), then the measured facts (a description that
contradicts the measurements is rejected). A rejected answer is asked again with another
seed; after ``max_attempts`` the grounded text replaces it and the row says so. Every
request goes through a response cache keyed on (model, template hash, input hash,
sampling), so a crash mid-slide or a re-run asks the model only for work not yet done, and
a changed prompt asks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.agent_prompts import (
    DESCRIPTION_FACTS,
    DESCRIPTION_VISION,
    REVISE_FACTS,
    REVISE_VISION,
    SUMMARY,
    SUMMARY_RETRY,
    PromptTemplate,
)
from pathgen_dagster.lib.captions.edit_log import EditLogError, parse_revision
from pathgen_dagster.lib.captions.llm import ChatClient, ChatRequest, ChatResult
from pathgen_dagster.lib.captions.screening import screen_output
from pathgen_dagster.lib.captions.tokenizer import CLIP_CONTEXT_LENGTH, get_tokenizer
from pathgen_dagster.lib.quality.evidence import Evidence
from pathgen_dagster.lib.selection import findings
from pathgen_dagster.lib.selection.facts import MorphologyFacts

AgentName = Literal["description", "revision", "summary"]
GROUNDED_MODEL_ID = "grounded-verbaliser-v1"


@dataclass(frozen=True)
class AgentConfig:
    """Sampling and verification knobs shared by the three agents.

    Attributes:
        temperature: sampling temperature (small models repeat themselves when greedy).
        top_p: nucleus sampling mass.
        seed: base seed; attempt n of a patch uses a seed derived from it, the patch and n.
        max_attempts: model calls per patch before falling back to the grounded text.
        fallback_to_grounded: replace a rejected output by the grounded text (recorded as
            ``fallback``); when False the row is recorded as ``failed`` with no text.
        max_failure_rate: a slide fails when more than this share of its rows needed a
            fallback or failed.
        description_max_words: word budget asked of the description agent.
        caption_max_words: word budget asked of the summary agent.
        max_tokens: completion token limit per agent.
    """

    temperature: float = 0.3
    top_p: float = 0.9
    seed: int = 0
    max_attempts: int = 3
    fallback_to_grounded: bool = True
    max_failure_rate: float = 0.5
    description_max_words: int = 120
    caption_max_words: int = 40
    max_tokens: dict[str, int] = field(
        default_factory=lambda: {"description": 256, "revision": 448, "summary": 96}
    )


@dataclass(frozen=True)
class PatchInput:
    """What an agent knows about one patch."""

    patch_id: str
    facts: MorphologyFacts
    tissue_site: str | None = None
    image_jpeg: bytes | None = None
    previous: str | None = None  # the draft (revision) or the revised description (summary)
    # The revision's second opinion: a re-measurement by another nucleus detector
    # (lib/quality/evidence.py). The draft is written from ``facts`` alone, so without it
    # the grounded revision has nothing to correct.
    evidence: Evidence | None = None


@dataclass(frozen=True)
class AgentOutput:
    """One agent's row for one patch, with its provenance."""

    patch_id: str
    text: str | None
    edits: tuple[dict, ...]
    backend: str
    model_id: str
    template_id: str
    template_hash: str
    sampling: dict
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    finish_reason: str | None
    cache_hit: bool
    status: Literal["ok", "fallback", "failed"]
    failure_reason: str | None


class ModelSession(Protocol):
    """A model endpoint the agents can use for the length of one asset run."""

    backend: str
    model_id: str
    vision: bool
    stop: tuple[str, ...]  # stop sequences base models need (they continue the dialogue)
    client: ChatClient


@dataclass
class ResponseCache:
    """Model answers by cache key; new answers are handed to ``sink`` as they arrive."""

    entries: dict[str, dict]
    sink: Callable[[dict], None] = lambda entry: None
    hits: int = 0

    def get(self, key: str) -> dict | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.hits += 1
        return entry

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        self.sink(entry)


class Rejected(ValueError):
    """A model answer that did not pass verification; the message is the reason."""


def facts_block(facts: MorphologyFacts) -> str:
    """The measured facts of a patch as the bullet list the text prompts show."""
    return "\n".join(
        [
            f"- field width: {facts.field_width_um:.0f} um",
            f"- tissue covers {facts.tissue_fraction:.0%} of the patch; white space "
            f"(lumen, fat or background) {facts.white_fraction:.0%}",
            f"- eosin-dominant (stroma, cytoplasm) share of tissue: {facts.eosin_fraction:.0%}",
            f"- cellularity: {facts.cellularity}, "
            f"{facts.nuclei_density_per_mm2:.0f} nuclei per mm2",
            f"- nuclear size: {facts.nuclear_size}, "
            f"mean area {facts.nuclear_area_mean_um2:.0f} um2",
            f"- nuclear pleomorphism: {facts.pleomorphism}",
            f"- stroma: {facts.stroma}; lumen or fat spaces: {facts.lumen_or_fat}",
            # Bands that failed the labelled set (inflammation_hint) are not shown: a model
            # would word them, and the fidelity rules count that as unsupported.
            *(
                [f"- small round lymphocyte-like nuclei: {facts.inflammation_hint}"]
                if "inflammation_hint" not in findings.UNVALIDATED_BANDS
                else []
            ),
        ]
    )


def sha(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _seed(config: AgentConfig, patch_id: str, attempt: int) -> int:
    return int(sha(f"{config.seed}:{patch_id}:{attempt}", 8), 16)


class Agent:
    """One stage's grounded text, prompt, and acceptance test."""

    name: AgentName
    # Constrained decoding where the answer has a fixed shape (vLLM and llama.cpp both
    # enforce it); small models rarely produce valid JSON without it.
    response_format: dict | None = None

    def grounded(self, item: PatchInput) -> tuple[str, tuple[dict, ...]]:
        raise NotImplementedError

    def template(
        self, item: PatchInput, session: ModelSession, attempt: int, last: str | None
    ) -> PromptTemplate:
        raise NotImplementedError

    def values(self, item: PatchInput, config: AgentConfig, last: str | None) -> dict:
        """Values for the template's placeholders (a superset: unused ones are dropped)."""
        raise NotImplementedError

    def prose(self, text: str, finish_reason: str | None) -> str:
        """The prose in an answer, which the screens judge; raises Rejected when the
        answer's format cannot be parsed (a parse failure, not a verdict on prose)."""
        return text

    def accept(self, item: PatchInput, text: str) -> tuple[str, tuple[dict, ...]]:
        """The accepted text and edits, or Rejected."""
        return text.strip(), ()


class DescriptionAgent(Agent):
    name = "description"

    def grounded(self, item):
        return verbalize.describe(item.facts, tissue_site=item.tissue_site, seed=item.patch_id), ()

    def template(self, item, session, attempt, last):
        return DESCRIPTION_VISION if session.vision and item.image_jpeg else DESCRIPTION_FACTS

    def values(self, item, config, last):
        return {"max_words": config.description_max_words, "facts": facts_block(item.facts)}

    def accept(self, item, text):
        return _grounded_text(text, item.facts), ()


class RevisionAgent(Agent):
    name = "revision"
    response_format = {"type": "json_object"}

    def grounded(self, item):
        draft = item.previous or ""
        revised, edits = verbalize.revise(draft, item.facts, seed=item.patch_id)
        if item.evidence is not None:
            revised, edits = withdraw_disputed(draft, revised, edits, item.evidence)
        return revised, tuple(edits)

    def template(self, item, session, attempt, last):
        return REVISE_VISION if session.vision and item.image_jpeg else REVISE_FACTS

    def values(self, item, config, last):
        facts = facts_block(item.facts)
        if item.evidence is not None and item.evidence.disputed:
            facts += "".join(
                f"\n- {band.replace('_', ' ')} is NOT confirmed: {item.evidence.reason(band)}; "
                "do not state it"
                for band in item.evidence.disputed
            )
        return {"draft": item.previous or "", "facts": facts}

    def prose(self, text, finish_reason):
        # The screens judge the revised description, never the JSON around it: a ```json
        # fence, repeated edit ops or an edit reason are not the prose the dataset keeps.
        try:
            return parse_revision(text).revised
        except EditLogError as error:
            cut = " (answer cut off at max_tokens)" if finish_reason == "length" else ""
            raise Rejected(f"parse: edit log: {error}{cut}") from None

    def accept(self, item, text):
        try:
            revision = parse_revision(text)
        except EditLogError as error:
            raise Rejected(f"edit log: {error}") from None
        edits = tuple(
            {"op": e.op, "span": e.span, "replacement": e.replacement, "reason": e.reason}
            for e in revision.edits
        )
        return _grounded_text(revision.revised, item.facts), edits


class SummaryAgent(Agent):
    name = "summary"

    def grounded(self, item):
        return verbalize.summarize(item.previous or "", item.facts, seed=item.patch_id), ()

    def template(self, item, session, attempt, last):
        return SUMMARY_RETRY if last is not None else SUMMARY

    def values(self, item, config, last):
        values = {"description": item.previous or "", "max_words": config.caption_max_words}
        if last is not None:
            values |= {
                "caption": last,
                "token_count": get_tokenizer().count(last),
                "token_limit": CLIP_CONTEXT_LENGTH,
            }
        return values

    def accept(self, item, text):
        caption = " ".join(text.strip().strip('"').split())
        tokens = get_tokenizer().count(caption)
        if tokens > CLIP_CONTEXT_LENGTH:
            raise TooLong(caption, tokens)
        return caption, ()


class TooLong(Rejected):
    """A caption over CLIP's window: asked again with its measured length."""

    def __init__(self, caption: str, tokens: int):
        super().__init__(f"caption is {tokens} CLIP tokens, over the {CLIP_CONTEXT_LENGTH} limit")
        self.caption = caption


_ORPHAN_PUNCTUATION = re.compile(r"\s+([,.;:])|([,;:])\s*(?=[,.;:])")


def _without(sentence: str, claims: Sequence[verbalize.Claim]) -> str | None:
    """``sentence`` with the words of ``claims`` taken out, or None when too little is left."""
    text = sentence
    for claim in sorted(claims, key=lambda c: -c.start):
        text = text[: claim.start] + text[claim.start + len(claim.phrase) :]
    text = " ".join(_ORPHAN_PUNCTUATION.sub(r"\1", text).split()).lstrip(",;: ")
    if len(text.split()) < 4 or not text.endswith((".", "!")):
        return None
    return text[:1].upper() + text[1:]


def withdraw_disputed(
    draft: str, revised: str, edits: Sequence[dict], evidence: Evidence
) -> tuple[str, list[dict]]:
    """The revision with every claim about a band the two detectors disagree on removed.

    PathGen's revise agent deletes features the evidence does not support. Here the
    evidence is a second nucleus detector (lib/quality/evidence.py): on the labelled
    calibration set the LoG band the draft was written from was right 89 % of the time
    where the two detectors agree and 47 % where they do not, so a disputed claim is
    withdrawn rather than swapped for the other detector's band. A sentence that makes
    only disputed claims is deleted; one that also says something else keeps the rest
    (``modify``). A sentence that an earlier edit wrote is corrected inside that edit, so
    every span still quotes the draft.

    Args:
        draft: the description the revision started from.
        revised: the revision so far (``verbalize.revise`` against the first facts).
        edits: its edit log.
        evidence: the second detector's measurement of the patch.
    """
    edits = [dict(edit) for edit in edits]
    if not evidence.disputed:
        return revised, edits
    kept: list[str] = []
    for sentence in verbalize.split_sentences(revised):
        claims = verbalize.read_claims(sentence)
        disputed = [c for c in claims if c.claim in evidence.disputed]
        if not disputed:
            kept.append(sentence)
            continue
        reason = "; ".join(
            f"{c.phrase!r}: not confirmed by independent evidence: {evidence.reason(c.claim)}"
            for c in disputed
        )
        fixed = _without(sentence, disputed) if len(disputed) < len(claims) else None
        if fixed is not None and any(c.claim in evidence.disputed for c in verbalize.read_claims(fixed)):
            fixed = None
        owner = next((e for e in edits if e["op"] != "delete" and sentence in e["replacement"]), None)
        if owner is None or sentence in verbalize.split_sentences(draft):
            edits.append(
                {"op": "modify", "span": sentence, "replacement": fixed, "reason": reason}
                if fixed
                else {"op": "delete", "span": sentence, "replacement": "", "reason": reason}
            )
        else:
            owner["replacement"] = " ".join(owner["replacement"].replace(sentence, fixed or "").split())
            owner["reason"] = f"{owner['reason']}; {reason}"
            if not owner["replacement"]:
                if owner["op"] == "add":
                    edits.remove(owner)
                else:
                    owner["op"] = "delete"
        if fixed:
            kept.append(fixed)
    return " ".join(kept), edits


def _grounded_text(text: str, facts: MorphologyFacts) -> str:
    found = verbalize.contradictions(text, facts)
    if found:
        raise Rejected(
            "contradicts the measured morphology: "
            + "; ".join(f"{p!r} ({r})" for p, r in found[:3])
        )
    return text.strip()


AGENTS: dict[AgentName, Agent] = {
    "description": DescriptionAgent(),
    "revision": RevisionAgent(),
    "summary": SummaryAgent(),
}


@dataclass
class _Progress:
    item: PatchInput
    attempts: int = 0
    last_caption: str | None = None
    rejections: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cache_hit: bool = False
    output: AgentOutput | None = None


def grounded_output(
    agent: Agent,
    item: PatchInput,
    *,
    backend: str = "grounded",
    progress: _Progress | None = None,
    status: str = "ok",
    reason: str | None = None,
) -> AgentOutput:
    """The grounded verbaliser's row for one item (also the fallback for rejected answers)."""
    text, edits = agent.grounded(item) if status != "failed" else (None, ())
    return AgentOutput(
        item.patch_id,
        text,
        tuple(edits),
        backend,
        GROUNDED_MODEL_ID,
        f"grounded.{agent.name}",
        sha(GROUNDED_MODEL_ID + agent.name, 16),
        {"seed": item.patch_id},
        progress.prompt_tokens if progress else 0,
        progress.completion_tokens if progress else 0,
        round(progress.latency_s, 3) if progress else 0.0,
        progress.attempts if progress else 0,
        None,
        progress.cache_hit if progress else False,
        status,
        reason,
    )


def run_agent(
    agent: Agent,
    items: Sequence[PatchInput],
    *,
    session: ModelSession | None,
    cache: ResponseCache,
    config: AgentConfig = AgentConfig(),
) -> list[AgentOutput]:
    """One output per item, in order: grounded text, or verified model answers.

    All items of a round are sent together (the client keeps ``max_concurrency`` in flight,
    so vLLM batches them); items whose answer was rejected go to the next round.
    """
    if session is None:
        return [grounded_output(agent, item) for item in items]
    progress = [_Progress(item) for item in items]
    for attempt in range(config.max_attempts):
        todo = [p for p in progress if p.output is None]
        if not todo:
            break
        requests: dict[str, tuple[_Progress, ChatRequest, PromptTemplate, str]] = {}
        answers: dict[str, ChatResult | dict] = {}
        for p in todo:
            template = agent.template(p.item, session, attempt, p.last_caption)
            messages = template.render(
                image_jpeg=p.item.image_jpeg if template.needs_image else None,
                **{
                    name: value
                    for name, value in agent.values(p.item, config, p.last_caption).items()
                    if name in template.fields
                },
            )
            sampling = _sampling(agent, config, p.item.patch_id, attempt) | {
                "stop": list(session.stop),
                "response_format": agent.response_format,
            }
            key = sha(
                json.dumps(
                    [session.model_id, template.template_hash, messages, sampling], sort_keys=True
                )
            )
            request = ChatRequest(
                key=key, messages=messages, model=session.model_id, **_request_args(sampling)
            )
            requests[key] = (p, request, template, json.dumps(sampling, sort_keys=True))
            if (hit := cache.get(key)) is not None:
                answers[key] = hit
        misses = [r for k, (_, r, _, _) in requests.items() if k not in answers]

        def remember(result: ChatResult, requests=requests) -> None:
            if result.ok:
                p, _, template, _ = requests[result.key]
                cache.put(
                    result.key,
                    {
                        "cache_key": result.key,
                        "agent": agent.name,
                        "patch_id": p.item.patch_id,
                        "model_id": session.model_id,
                        "template_hash": template.template_hash,
                        "input_hash": sha(
                            json.dumps(requests[result.key][1].messages, sort_keys=True)
                        ),
                        "text": result.text,
                        "finish_reason": result.finish_reason,
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "latency_s": result.latency_s,
                    },
                )

        for result in session.client.complete_many(misses, on_result=remember):
            answers[result.key] = result
        for key, (p, _, template, sampling) in requests.items():
            _settle(agent, p, answers[key], template, sampling, session, attempt, config)
    return [p.output or _fallback(agent, p, session, config) for p in progress]


def _sampling(agent: Agent, config: AgentConfig, patch_id: str, attempt: int) -> dict:
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens[agent.name],
        "seed": _seed(config, patch_id, attempt),
    }


def _request_args(sampling: dict) -> dict:
    keys = ("temperature", "top_p", "max_tokens", "seed", "stop", "response_format")
    return {k: sampling[k] for k in keys}


def _settle(agent, p: _Progress, answer, template, sampling, session, attempt, config) -> None:
    """Accept or reject one answer; an accepted one becomes the item's output."""
    cached = isinstance(answer, dict)
    text = answer["text"] if cached else answer.text
    finish = answer["finish_reason"] if cached else answer.finish_reason
    p.attempts += 0 if cached else answer.attempts
    p.cache_hit = p.cache_hit or cached
    p.prompt_tokens += answer["prompt_tokens"] if cached else answer.prompt_tokens
    p.completion_tokens += answer["completion_tokens"] if cached else answer.completion_tokens
    p.latency_s += 0.0 if cached else answer.latency_s
    try:
        if not cached and not answer.ok:
            raise Rejected(f"request failed: {answer.error}")
        prose = agent.prose(text or "", finish)
        reason = screen_output(prose, finish, example_phrases=template.example_phrases)
        if reason is not None:
            raise Rejected(reason)
        accepted, edits = agent.accept(p.item, text)
    except TooLong as too_long:
        p.last_caption = too_long.caption
        p.rejections.append(str(too_long))
        if attempt == config.max_attempts - 1:
            # Kept, not cut: the quality stage rejects it (fits_clip is False).
            p.output = _output(
                agent,
                p,
                too_long.caption,
                (),
                template,
                sampling,
                session,
                finish,
                "ok",
                str(too_long),
            )
        return
    except Rejected as rejected:
        p.rejections.append(str(rejected))
        return
    p.output = _output(agent, p, accepted, edits, template, sampling, session, finish, "ok", None)


def _output(
    agent, p, text, edits, template, sampling, session, finish, status, reason
) -> AgentOutput:
    return AgentOutput(
        p.item.patch_id,
        text,
        tuple(edits),
        session.backend,
        session.model_id,
        f"{template.template_id}.v{template.version}",
        template.template_hash,
        json.loads(sampling),
        p.prompt_tokens,
        p.completion_tokens,
        round(p.latency_s, 3),
        p.attempts,
        finish,
        p.cache_hit,
        status,
        reason,
    )


def _fallback(
    agent: Agent, p: _Progress, session: ModelSession, config: AgentConfig
) -> AgentOutput:
    reason = " | ".join(p.rejections[-config.max_attempts :]) or "no accepted answer"
    status = "fallback" if config.fallback_to_grounded else "failed"
    return grounded_output(
        agent, p.item, backend=session.backend, progress=p, status=status, reason=reason
    )


def failure_rate(outputs: Sequence[AgentOutput]) -> float:
    """Share of rows whose model output was rejected (fallback or failed)."""
    return sum(o.status != "ok" for o in outputs) / len(outputs) if outputs else 0.0
