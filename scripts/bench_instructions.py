"""Instruction stage figures in one run: rate per backend, quarantine, letters, variety.

Reads the pairs of a built lakehouse (``make demo``), builds every slide's instructions
with the grounded backend (the default), then answers the conversations of the first
``--embedded-pairs`` pairs through the embedded llama.cpp server (SmolLM2-135M, the real
local server), and prints:

* conversations per second (wall and CPU) on both backends, and their ratio; all
  instructions per second on the grounded backend;
* the share of rows quarantined per rule, per backend;
* the answer-letter distribution of the multiple-choice items;
* distinct question templates per 100 items.

Nothing is written to the lakehouse (the response cache is in memory).

    .venv/bin/python scripts/bench_instructions.py --lakehouse lakehouse --embedded-pairs 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from assets.instructions import pair_inputs
from pathgen_dagster.lib.captions.agents import ResponseCache
from pathgen_dagster.lib.instructions.generate import (
    InstructionConfig,
    build_slide,
    conversation_rows,
    judge_rows,
)
from pathgen_dagster.lib.instructions.rules import letter_balance, quarantine_shares
from pathgen_dagster.resources.lakehouse import Lakehouse
from pathgen_dagster.resources.llm import LLMServer


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def shares_line(rows) -> str:
    shares = quarantine_shares([r.failed_rules for r in rows])
    quarantined = sum(bool(r.failed_rules) for r in rows) / max(len(rows), 1)
    failing = {rule: round(share, 3) for rule, share in shares.items() if share}
    return f"quarantined {quarantined:.1%} of {len(rows)}; per rule: {failing or 'none'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lakehouse", default=os.environ.get("PATHGEN_LAKEHOUSE", "lakehouse"))
    parser.add_argument("--embedded-pairs", type=int, default=4)
    args = parser.parse_args()
    lakehouse = Lakehouse(root=args.lakehouse)
    if lakehouse.version("training_pairs") is None:
        print("no training_pairs: run `make demo` first", file=sys.stderr)
        return 1
    slide_ids = lakehouse.sql("SELECT DISTINCT slide_id FROM training_pairs ORDER BY 1")["slide_id"]
    pairs = {slide_id: pair_inputs(lakehouse, slide_id) for slide_id in slide_ids}
    config = InstructionConfig()

    def grounded():
        return [
            row
            for slide_id, slide_pairs in pairs.items()
            for row in build_slide(slide_id, slide_pairs, session=None, cache=ResponseCache({}))
        ]

    rows, g_wall, g_cpu = timed(grounded)
    g_conversations = [r for r in rows if r.kind == "conversation"]
    sample = [p for slide_pairs in pairs.values() for p in slide_pairs][: args.embedded_pairs]

    def embedded():
        with LLMServer(backend="embedded", embedded_parallel=2).session() as session:
            return judge_rows(
                conversation_rows(sample, session=session, cache=ResponseCache({}), config=config),
                sample,
            )

    e_rows, e_wall, e_cpu = timed(embedded)
    g_rate = len(g_conversations) / g_wall
    e_rate = len(e_rows) / e_wall
    print(f"pairs: {sum(map(len, pairs.values()))} on {len(pairs)} slides; embedded sample {len(sample)}")
    print(
        f"grounded: {len(rows)} instructions in {g_wall:.2f}s wall / {g_cpu:.2f}s CPU "
        f"({len(rows) / g_wall:.1f} instructions/s; {g_rate:.1f} conversations/s)"
    )
    print(
        f"embedded: {len(e_rows)} conversations in {e_wall:.2f}s wall / {e_cpu:.2f}s CPU here "
        f"(server CPU not counted) ({e_rate:.3f} conversations/s, server start included)"
    )
    print(f"ratio grounded / embedded conversations per second (wall): {g_rate / e_rate:.0f}x")
    statuses = Counter(r.generation_status for r in e_rows)
    print(f"embedded answers: {dict(statuses)} (fallback = every attempt rejected)")
    for row in e_rows:
        if row.generation_failure:
            print(f"  {row.pair_id}: {row.generation_failure[:240]}")
    print(f"grounded rows: {shares_line(rows)}")
    print(f"embedded rows: {shares_line(e_rows)}")
    letters = [r.answer_letter for r in rows if r.answer_letter]
    balance = letter_balance(letters)
    shares = {k: round(v / max(len(letters), 1), 3) for k, v in balance.counts.items()}
    print(f"answer letters: {balance.counts} shares {shares} -> {balance.message}")
    windows = [rows[i : i + 100] for i in range(0, len(rows), 100) if len(rows[i : i + 100]) == 100]
    windows = windows or [rows]
    distinct = [len({t for r in w for t in r.question_template_ids}) for w in windows]
    print(f"distinct question templates per 100 items: {distinct} (windows of {len(windows[0])} rows)")
    sys.stdout.flush()
    os._exit(0)  # deltalake's runtime threads can abort a clean exit (FACTS.md)


if __name__ == "__main__":
    raise SystemExit(main())
