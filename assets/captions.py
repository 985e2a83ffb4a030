"""``descriptions`` -> ``revised_descriptions`` -> ``captions``: PathGen stages B, C and D."""

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from pathgen_dagster.lib.captions.agents import (
    AGENTS,
    AgentConfig,
    AgentOutput,
    PatchInput,
    ResponseCache,
    failure_rate,
    run_agent,
)
from pathgen_dagster.lib.captions.tokenizer import CLIP_CONTEXT_LENGTH, get_tokenizer
from pathgen_dagster.lib.quality import evidence
from pathgen_dagster.lib.schemas import (
    CAPTIONS,
    DESCRIPTIONS,
    LLM_RESPONSES,
    PATCHES,
    REVISED_DESCRIPTIONS,
    TableSpec,
)
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.lib.selection.prompts_library import GENERIC
from pathgen_dagster.metadata import column_schema, config_hash, preview
from pathgen_dagster.partitions import slide_partitions
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer, agent_pool

_AGENT = AgentConfig()
CACHE_FLUSH_EVERY = 16
# Answers are also committed once the oldest unsaved one is this old, so a SIGKILL loses
# at most CACHE_FLUSH_EVERY - 1 answers or CACHE_FLUSH_AFTER_S seconds of answers, whichever
# is fewer (with slow answers, about one).
CACHE_FLUSH_AFTER_S = 5.0


class AgentsConfig(dg.Config):
    """Sampling and verification knobs of the caption agents (see ``AgentConfig``)."""

    temperature: float = _AGENT.temperature
    top_p: float = _AGENT.top_p
    seed: int = _AGENT.seed
    max_attempts: int = _AGENT.max_attempts
    fallback_to_grounded: bool = _AGENT.fallback_to_grounded
    max_failure_rate: float = _AGENT.max_failure_rate
    description_max_words: int = _AGENT.description_max_words
    caption_max_words: int = _AGENT.caption_max_words

    def agent(self) -> AgentConfig:
        return AgentConfig(**self.model_dump())


class CacheWriter:
    """Model answers appended to ``llm_responses`` as they arrive, in small commits."""

    def __init__(
        self,
        lakehouse: Lakehouse,
        slide_id: str,
        *,
        every: int = CACHE_FLUSH_EVERY,
        after_s: float = CACHE_FLUSH_AFTER_S,
    ):
        self.lakehouse, self.slide_id, self.buffer = lakehouse, slide_id, []
        self.every, self.after_s, self.oldest = every, after_s, 0.0

    def __call__(self, entry: dict) -> None:
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.append({**entry, "slide_id": self.slide_id, "created_at": datetime.now(UTC)})
        if len(self.buffer) >= self.every or time.monotonic() - self.oldest >= self.after_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.lakehouse.append(LLM_RESPONSES.name, pl.DataFrame(self.buffer))
            self.buffer = []


def run_stage(
    context: dg.AssetExecutionContext,
    *,
    agent_name: str,
    items: list[PatchInput],
    upstream: str,
    config: AgentsConfig,
    lakehouse: Lakehouse,
    llm: LLMServer,
) -> tuple[list[AgentOutput], dict]:
    """Run one agent over a slide's patches; returns its outputs and the common row fields."""
    slide_id = context.partition_key
    cached = lakehouse.read(LLM_RESPONSES.name, slide_id=slide_id)
    writer = CacheWriter(lakehouse, slide_id)
    cache = ResponseCache(
        {row["cache_key"]: row for row in cached.iter_rows(named=True)}, sink=writer
    )
    started = time.perf_counter()
    try:
        with llm.session() as session:
            context.log.info(f"{agent_name}: {len(items)} patches on backend {llm.backend}")
            outputs = run_agent(
                AGENTS[agent_name], items, session=session, cache=cache, config=config.agent()
            )
            stopped = session.client.stopped if session is not None else None
            exited = session.server_exit() if session is not None else None
            if exited is not None:  # say that the server died, not only "ConnectError"
                stopped = f"{exited}\n(client: {stopped or 'requests failed'})"
    finally:
        writer.flush()  # answers already received survive a crash mid-slide
    if stopped is not None:
        # Not retried: the step would hold the model pool for another round of timeouts.
        raise dg.Failure(
            description=(
                f"slide {slide_id}, stage {agent_name}: stopped asking the model server"
                f" ({llm.backend}): {stopped}. Answers received so far are kept in"
                f" {LLM_RESPONSES.name} and are not asked again. Fix: check the server"
                " (its log, `curl <url>/v1/models`), then re-run the slide."
            ),
            allow_retries=False,
        )
    elapsed = time.perf_counter() - started
    stats = {
        "backend": ", ".join(sorted({f"{o.backend} ({o.model_id})" for o in outputs})) or llm.backend,
        "seconds": round(elapsed, 2),
        "cache_hits": cache.hits,
        "requests_sent": sum(o.attempts for o in outputs),
        "failure_rate": round(failure_rate(outputs), 3),
        "fallbacks": sum(o.status == "fallback" for o in outputs),
        "completion_tokens": sum(o.completion_tokens for o in outputs),
    }
    common = {
        "slide_id": slide_id,
        "backend": [o.backend for o in outputs],
        "model_id": [o.model_id for o in outputs],
        "template_id": [o.template_id for o in outputs],
        "template_hash": [o.template_hash for o in outputs],
        "sampling_json": [json.dumps(o.sampling, sort_keys=True) for o in outputs],
        "prompt_tokens": [o.prompt_tokens for o in outputs],
        "completion_tokens": [o.completion_tokens for o in outputs],
        "latency_s": [o.latency_s for o in outputs],
        "attempts": pl.Series([o.attempts for o in outputs], dtype=pl.Int32),
        "finish_reason": pl.Series([o.finish_reason for o in outputs], dtype=pl.String),
        "cache_hit": [o.cache_hit for o in outputs],
        "status": [o.status for o in outputs],
        "failure_reason": pl.Series([o.failure_reason for o in outputs], dtype=pl.String),
        "run_id": context.run_id,
        "config_hash": config_hash(
            config.model_dump() | {"backend": llm.backend, "model": llm.model}
        ),
        "upstream_version": lakehouse.version(upstream),
    }
    return outputs, {"common": common, "stats": stats}


def finish(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    frame: pl.DataFrame,
    outputs: list[AgentOutput],
    stats: dict,
    config: AgentsConfig,
    lakehouse: Lakehouse,
    preview_columns: list[str],
) -> dg.MaterializeResult:
    """Write the stage's rows, then fail the slide if too many model answers were rejected."""
    slide_id = context.partition_key
    version = lakehouse.write_slide(spec.name, slide_id, frame)
    rate = failure_rate(outputs)
    if rate > config.max_failure_rate:
        reasons = sorted({o.failure_reason for o in outputs if o.failure_reason})[:3]
        raise dg.Failure(
            f"slide {slide_id!r}, stage {spec.name}: {rate:.0%} of model answers were rejected "
            f"(limit {config.max_failure_rate:.0%}); rows are written with their reasons. "
            f"First reasons: {reasons}",
            metadata={"delta_version": version, **stats},
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "delta_version": version,
            **stats,
            "preview": preview(frame, preview_columns),
        }
    )


def patch_inputs(
    lakehouse: Lakehouse,
    slide_id: str,
    previous: dict[str, str | None] | None = None,
    *,
    with_evidence: bool = False,
) -> list[PatchInput]:
    """The slide's patches as agent inputs (facts, site, image, and the previous text).

    ``with_evidence`` re-measures each patch with the second nucleus detector
    (``evidence.measure_jpeg``, ~0.4 CPU s per 672 px patch at 20x): the revise agent's
    independent evidence.
    """
    patches = lakehouse.read(
        PATCHES.name,
        slide_id=slide_id,
        columns=["patch_id", "facts_json", "tissue_site", "image_jpeg"],
    ).sort("patch_id")
    items = []
    for row in patches.iter_rows(named=True):
        if previous is not None and row["patch_id"] not in previous:
            continue
        facts = MorphologyFacts.from_dict(json.loads(row["facts_json"]))
        items.append(
            PatchInput(
                patch_id=row["patch_id"],
                facts=facts,
                # "generic" is the prompt set for an unknown site, not a site to name in text.
                tissue_site=None if row["tissue_site"] == GENERIC else row["tissue_site"],
                image_jpeg=row["image_jpeg"],
                previous=previous.get(row["patch_id"]) if previous is not None else None,
                evidence=evidence.measure_jpeg(row["image_jpeg"], facts) if with_evidence else None,
            )
        )
    return items


def _texts(lakehouse: Lakehouse, table: str, column: str, slide_id: str) -> dict[str, str]:
    rows = lakehouse.read(table, slide_id=slide_id, columns=["patch_id", column])
    return {row["patch_id"]: row[column] for row in rows.iter_rows(named=True) if row[column]}


def agent_asset(
    spec: TableSpec,
    *,
    agent_name: str,
    upstream: TableSpec,
    previous_column: str | None,
    columns: Callable[[list[AgentOutput], list[PatchInput]], dict],
    preview_columns: list[str],
    frame_stats: Callable[[pl.DataFrame], dict] = lambda frame: {},
    with_evidence: bool = False,
) -> dg.AssetsDefinition:
    """The Dagster asset of one caption agent: read its inputs, run it, write ``spec``'s rows.

    Args:
        spec: the table the agent writes.
        agent_name: key of the agent in ``AGENTS``.
        upstream: the table it reads (its dependency and recorded version).
        previous_column: column of ``upstream`` holding the text the agent works on (the
            draft for the revision, the revised text for the summary); ``None`` for the
            first agent, which reads only the patches.
        columns: the stage's own columns from the outputs and inputs, in any order.
        preview_columns: columns shown in the UI preview.
        frame_stats: extra UI metadata computed from the written frame.
        with_evidence: give the agent the second detector's re-measurement of each patch.
    """

    @dg.asset(
        name=spec.name,
        deps=[upstream.name],
        description=spec.doc,
        metadata={"dagster/column_schema": column_schema(spec)},
        partitions_def=slide_partitions,
        group_name="captions",
        pool=agent_pool(),  # `llm` only where the agents call a model server
        kinds={"llm", "delta"},
    )
    def _agent(
        context: dg.AssetExecutionContext, config: AgentsConfig, lakehouse: Lakehouse, llm: LLMServer
    ) -> dg.MaterializeResult:
        slide_id = context.partition_key
        previous = (
            None
            if previous_column is None
            else _texts(lakehouse, upstream.name, previous_column, slide_id)
        )
        items = patch_inputs(lakehouse, slide_id, previous=previous, with_evidence=with_evidence)
        outputs, parts = run_stage(
            context,
            agent_name=agent_name,
            items=items,
            upstream=upstream.name,
            config=config,
            lakehouse=lakehouse,
            llm=llm,
        )
        frame = pl.DataFrame(
            {
                "patch_id": [o.patch_id for o in outputs],
                **columns(outputs, items),
                **parts["common"],
            }
        ).select(spec.column_names)
        stats = parts["stats"] | frame_stats(frame)
        return finish(context, spec, frame, outputs, stats, config, lakehouse, preview_columns)

    return _agent


def _description_columns(outputs: list[AgentOutput], items: list[PatchInput]) -> dict:
    return {
        "description": pl.Series([o.text for o in outputs], dtype=pl.String),
        "facts_json": [json.dumps(i.facts.to_dict()) for i in items],
    }


def _revision_columns(outputs: list[AgentOutput], items: list[PatchInput]) -> dict:
    return {
        "draft": pl.Series([i.previous for i in items], dtype=pl.String),
        "revised": pl.Series([o.text for o in outputs], dtype=pl.String),
        "edits_json": [json.dumps(list(o.edits)) for o in outputs],
        "n_edits": pl.Series([len(o.edits) for o in outputs], dtype=pl.Int32),
        "evidence_json": [i.evidence.to_json() for i in items],
    }


def _caption_columns(outputs: list[AgentOutput], items: list[PatchInput]) -> dict:
    tokenizer = get_tokenizer()
    tokens = [tokenizer.count(o.text) if o.text else 0 for o in outputs]
    return {
        "caption": pl.Series([o.text for o in outputs], dtype=pl.String),
        "clip_tokens": pl.Series(tokens, dtype=pl.Int32),
        "fits_clip": [0 < t <= CLIP_CONTEXT_LENGTH for t in tokens],
    }


descriptions = agent_asset(
    DESCRIPTIONS,
    agent_name="description",
    upstream=PATCHES,
    previous_column=None,
    columns=_description_columns,
    preview_columns=["patch_id", "status", "description"],
)
revised_descriptions = agent_asset(
    REVISED_DESCRIPTIONS,
    agent_name="revision",
    upstream=DESCRIPTIONS,
    previous_column="description",
    columns=_revision_columns,
    preview_columns=["patch_id", "n_edits", "revised"],
    frame_stats=lambda frame: {
        "edits_per_100_patches": round(100 * int(frame["n_edits"].sum()) / len(frame), 1)
        if len(frame)
        else 0.0
    },
    with_evidence=True,
)
captions = agent_asset(
    CAPTIONS,
    agent_name="summary",
    upstream=REVISED_DESCRIPTIONS,
    previous_column="revised",
    columns=_caption_columns,
    preview_columns=["patch_id", "clip_tokens", "caption"],
    frame_stats=lambda frame: {
        "share_fitting_clip": round(sum(frame["fits_clip"]) / len(frame), 3) if len(frame) else 1.0
    },
)
