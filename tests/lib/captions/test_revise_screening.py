"""The revise agent parses its JSON answer first, then screens the revised text (issue 16).

A real local HTTP server speaks the OpenAI chat-completions protocol and answers each
request with a scripted message content: a valid edit log in a ```json fence, a valid one
with four delete edits, one whose edit reason says "measured facts", and invalid JSON.
Before the fix the screens judged the raw JSON and rejected the first three as
"formatting: markdown", "repetition: 'op delete span' occurs 4 times" and a refusal, and
reported the invalid one as "off_topic: no histology vocabulary".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pathgen_dagster.lib.captions import verbalize
from pathgen_dagster.lib.captions.agents import AGENTS, AgentConfig, PatchInput, ResponseCache, run_agent
from pathgen_dagster.lib.captions.llm import ChatClient
from pathgen_dagster.lib.selection.facts import MorphologyFacts
from pathgen_dagster.resources.llm import Session

FACTS = MorphologyFacts.from_dict(
    json.loads((Path(__file__).parents[2] / "assets" / "facts_example.json").read_text())
)
DRAFT_EXTRA = ["Mitoses are frequent.", "Necrosis is present.", "Calcification is seen.", "Mucin pools."]


def revised_text() -> str:
    return verbalize.describe(FACTS, tissue_site=None, seed="p")


def edit_log(edits: list[dict]) -> str:
    return json.dumps({"revised": revised_text(), "edits": edits})


def delete(span: str, reason: str = "not supported by the image") -> dict:
    return {"op": "delete", "span": span, "replacement": "", "reason": reason}


ANSWERS = {
    "fenced": "```json\n" + edit_log([delete(DRAFT_EXTRA[0])]) + "\n```",
    "four_deletes": edit_log([delete(span) for span in DRAFT_EXTRA]),
    "reason_mentions_facts": edit_log(
        [delete(DRAFT_EXTRA[0], "the measured facts do not support it; as an AI I removed it")]
    ),
    "invalid": '{"revised": "Glandular tissue with',
}


class _Answers(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint answering the patch named in the prompt's draft."""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = json.dumps(body["messages"])
        name = next(key for key in ANSWERS if f"[{key}]" in prompt)
        reply = json.dumps(
            {
                "model": "scripted",
                "choices": [{"message": {"content": ANSWERS[name]}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_revision_answers_are_parsed_then_their_revised_text_screened(url: str) -> None:
    draft = revised_text() + " " + " ".join(DRAFT_EXTRA)
    items = [PatchInput(patch_id=name, facts=FACTS, previous=f"[{name}] {draft}") for name in ANSWERS]
    config = AgentConfig(max_attempts=1, fallback_to_grounded=False)
    with ChatClient(url, max_retries=0) as client:
        outputs = run_agent(
            AGENTS["revision"],
            items,
            session=Session("vllm", "scripted", False, client),
            cache=ResponseCache({}),
            config=config,
        )
    by_name = {output.patch_id: output for output in outputs}
    for name in ("fenced", "four_deletes", "reason_mentions_facts"):
        assert by_name[name].status == "ok", (name, by_name[name].failure_reason)
        assert by_name[name].text == revised_text()
    assert len(by_name["four_deletes"].edits) == 4
    invalid = by_name["invalid"]
    assert invalid.status == "failed"
    assert invalid.failure_reason.startswith("parse: edit log:"), invalid.failure_reason
    assert "off_topic" not in invalid.failure_reason
